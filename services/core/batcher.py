"""DynamicBatcher: groups items submitted by concurrent callers into batches for one handler. asyncio only.

It knows nothing of gRPC or of the model: a batch is a list of the submitted items, and the handler returns one
result or one exception per item.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.core.errors import DeadlineExceeded, QueueFull, Unavailable

I = TypeVar("I")  # noqa: E741 - the conventional name of the item type
O = TypeVar("O")  # noqa: E741 - the result type, paired with I

BatchHandler = Callable[[list[I]], Awaitable[Sequence[O | BaseException]]]


@dataclass(eq=False)
class _Pending(Generic[I, O]):
    item: I
    future: asyncio.Future[O]
    enqueued_at: float
    deadline: float | None
    size: int
    key: int = field(default=0)


class DynamicBatcher(Generic[I, O]):
    """Batches items from concurrent `submit` calls and runs `handle_batch` on them.

    - A batch closes when it holds `max_batch_size` items or when its oldest item has waited `max_wait_s`.
    - When more items wait than fit, the batch takes the oldest item and the items whose `size_of` is nearest
      to it (length bucketing: one pad length per batch wastes little).
    - At most `max_queue_size` items wait; `submit_many` admits all of a request's items or raises QueueFull.
    - Admission by time: the batcher measures its service rate (items served, not failed, per second while
      items wait or run) and refuses at once (QueueFull with a retry hint) items that, behind the items queued
      and running, would not be done within a share of their deadline or within `max_queue_time_s` (0: no such
      limit). Under overload the queue so stays as long as callers are willing to wait, and callers learn it at
      once instead of timing out. With nothing queued or running, items are always admitted.
    - Items whose caller cancelled leave the queue at once; items whose deadline passed are failed with
      DeadlineExceeded before they run. A cancelled caller's future never receives a result.
    - Up to `max_concurrent_batches` handler calls run at once (1: the next batch forms while one runs).
      `handle_batch` is called on the loop the moment its batch closes, and a batch's slot is freed before its
      results are delivered: a handler that starts its work before returning its awaitable (submits it to an
      executor) has the next batch running while the loop answers the callers of the last one.
    - `start()` launches the background task; `aclose()` stops admitting (Unavailable), runs what is queued,
      then stops.
    """

    def __init__(
        self,
        handle_batch: BatchHandler[I, O],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_size: int,
        max_concurrent_batches: int = 1,
        max_queue_time_s: float = 0.0,
        size_of: Callable[[I], int] = lambda _: 0,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_concurrent_batches < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size, max_queue_size, max_concurrent_batches >= 1 and max_wait_s >= 0")
        self._handle_batch = handle_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue_size = max_queue_size
        self._size_of = size_of
        self._on_drop = on_drop
        self._queue: dict[int, _Pending[I, O]] = {}
        self._keys = itertools.count()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._max_queue_time_s = max_queue_time_s
        self.rate = ServiceRate()
        self._running_items = 0

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing waiting and no batch running."""
        return not self._queue and self._running_items == 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def submit(self, item: I, deadline: float | None = None) -> O:
        """Queue one item and wait for its result; `deadline` is an absolute `loop.time()`."""
        return (await self.submit_many([item], deadline))[0]

    def admit(self, count: int, deadline: float | None = None) -> None:
        """Raise (Unavailable while closing, QueueFull when full or when the measured rate says `count` items would
        not be done in time) or return: what `submit_many` checks first, and callers may check before they spend
        work on a request (tokenizing it, say)."""
        if self._closing or self._task is None:
            raise Unavailable("the server is draining and accepts no new work; retry on another replica")
        if len(self._queue) + count > self._max_queue_size:
            raise QueueFull(
                f"queue full: {len(self._queue)} items waiting, {count} more would exceed "
                f"max_queue_size={self._max_queue_size}; retry with backoff"
            )
        per_s = self.rate.per_s
        ahead = self._running_items + len(self._queue)
        if per_s is None or ahead == 0:  # only work that runs can correct a rate measured while items failed
            return
        expected_s = (ahead + count) / per_s
        limits = []
        if deadline is not None:
            limits.append((DEADLINE_SHARE * (deadline - asyncio.get_running_loop().time()), "of this call's deadline"))
        if self._max_queue_time_s > 0:
            limits.append((self._max_queue_time_s, "max_queue_time_s"))
        for allowed_s, which in limits:
            if expected_s > allowed_s:
                error = QueueFull(
                    f"overloaded: {ahead} items ahead at the measured {per_s:.0f} items/s would take about "
                    f"{expected_s:.2f} s, more than the {max(allowed_s, 0.0):.2f} s allowed ({which}); retry later or "
                    "on another replica"
                )
                error.retry_after_s = max(ahead / per_s - max(allowed_s, 0.0), MIN_RETRY_AFTER_S)
                raise error

    async def submit_many(self, items: Sequence[I], deadline: float | None = None) -> list[O]:
        """Queue all items (or none: see `admit`) and wait for all their results, in order."""
        self.admit(len(items), deadline)
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._account_busy(now)
        futures = []
        for item in items:
            pending: _Pending[I, O] = _Pending(item, loop.create_future(), now, deadline, self._size_of(item))
            pending.key = next(self._keys)
            pending.future.add_done_callback(self._forget_if_cancelled(pending.key))
            self._queue[pending.key] = pending
            futures.append(pending.future)
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        """Stop admitting, run every queued item, wait for running batches, stop the background task."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _account_busy(self, now: float) -> None:
        """Before the state changes: the time since the last change was busy when items waited or ran. Waiting
        counts too, so that under load the rate includes the loop's own time between batches."""
        self.rate.busy(now, self._running_items > 0 or bool(self._queue))

    def _forget_if_cancelled(self, key: int) -> Callable[[asyncio.Future[O]], None]:
        def forget(future: asyncio.Future[O]) -> None:
            if future.cancelled() and self._queue.pop(key, None) is not None and self._on_drop:
                self._on_drop("cancelled", 1)

        return forget

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_until_batch_closes(loop)
            await self._slots.acquire()
            now = loop.time()
            self._account_busy(now)  # before taking the batch: its items waited until now
            live = [p for p in self._take_batch(now) if not p.future.done()]
            if not live:
                self._slots.release()
                continue
            self._running_items += len(live)
            task = loop.create_task(self._complete(live, self._start(live)))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_until_batch_closes(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._queue and len(self._queue) < self._max_batch_size and not self._closing:
            oldest = next(iter(self._queue.values()))
            remaining = oldest.enqueued_at + self._max_wait_s - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self, now: float) -> list[_Pending[I, O]]:
        # A future cancelled a moment ago may still be queued (its clean-up callback has not run yet): it is
        # dropped here, never failed a second time.
        for pending in [p for p in self._queue.values() if p.future.cancelled()]:
            self._forget_if_cancelled(pending.key)(pending.future)
        expired = [p for p in self._queue.values() if p.deadline is not None and now >= p.deadline]
        for pending in expired:
            del self._queue[pending.key]
            pending.future.set_exception(
                DeadlineExceeded("deadline exceeded while queued for a batch; the item did not run")
            )
        if expired and self._on_drop:
            self._on_drop("deadline", len(expired))
        if not self._queue:
            return []
        waiting = list(self._queue.values())
        if len(waiting) > self._max_batch_size:
            oldest = waiting[0]
            nearest = sorted(waiting[1:], key=lambda p: abs(p.size - oldest.size))
            waiting = [oldest, *nearest[: self._max_batch_size - 1]]
        for pending in waiting:
            del self._queue[pending.key]
        return waiting

    def _start(self, batch: list[_Pending[I, O]]) -> Awaitable[Sequence[O | BaseException]]:
        try:
            return self._handle_batch([p.item for p in batch])
        except Exception as error:  # raised before it returned an awaitable: fail the batch the same way
            return _failed(error)

    async def _complete(self, batch: list[_Pending[I, O]], running: Awaitable[Sequence[O | BaseException]]) -> None:
        results: Sequence[O | BaseException] = []
        try:
            results = await running
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        except (Exception, asyncio.CancelledError) as error:  # the whole batch failed: every caller learns why
            # (a CancelledError too: one from the handler's own calls, say, must not leave the callers waiting)
            results = [error] * len(batch)
        finally:
            self._account_busy(asyncio.get_running_loop().time())
            # Served items only: a handler that fails fast (a backend refusing under overload) must not make
            # the batcher look faster than the items it actually serves.
            self.rate.completed(sum(not isinstance(result, BaseException) for result in results))
            self._running_items -= len(batch)
            self._slots.release()  # before delivering: the next batch starts ahead of the callers' wake-ups
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


# An item is admitted when it would be done within this share of the time its deadline leaves: the estimate is a
# mean, the rate itself drops when overload begins (refusals take CPU too), and a call that finishes just past its
# deadline is as lost as one refused. At twice the classifier's capacity with 1 s deadlines, a share of 0.5 left
# 2-3% of admitted calls past their deadline, 0.3 none, with the same goodput.
DEADLINE_SHARE = 0.3
MIN_RETRY_AFTER_S = 0.05


class ServiceRate:
    """Items completed per second of busy time (time in which items waited or ran), both decayed with a time constant of
    `horizon_s` busy seconds, so the rate follows the recent load mix. None until `min_busy_s` was measured."""

    def __init__(self, horizon_s: float = 5.0, min_busy_s: float = 0.05) -> None:
        self._horizon_s = horizon_s
        self._min_busy_s = min_busy_s
        self._items = 0.0
        self._busy_s = 0.0
        self._mark = 0.0

    def busy(self, now: float, was_busy: bool) -> None:
        """Account the time since the last call as busy when there was work all through it."""
        if was_busy and now > self._mark:
            elapsed = now - self._mark
            decay = math.exp(-elapsed / self._horizon_s)
            self._items *= decay
            self._busy_s = self._busy_s * decay + elapsed
        self._mark = now

    def completed(self, items: int) -> None:
        self._items += items

    @property
    def per_s(self) -> float | None:
        return self._items / self._busy_s if self._busy_s >= self._min_busy_s and self._items > 0 else None


async def _failed(error: Exception) -> Sequence[Any]:
    raise error
