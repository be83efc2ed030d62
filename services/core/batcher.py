"""DynamicBatcher: groups items submitted by concurrent callers into batches for one handler. asyncio only.

It knows nothing of gRPC or of the model: a batch is a list of the submitted items, and the handler returns one
result or one exception per item.
"""

from __future__ import annotations

import asyncio
import itertools
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

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def submit(self, item: I, deadline: float | None = None) -> O:
        """Queue one item and wait for its result; `deadline` is an absolute `loop.time()`."""
        return (await self.submit_many([item], deadline))[0]

    async def submit_many(self, items: Sequence[I], deadline: float | None = None) -> list[O]:
        """Queue all items (or none: QueueFull) and wait for all their results, in order."""
        if self._closing or self._task is None:
            raise Unavailable("the server is draining and accepts no new work; retry on another replica")
        if len(self._queue) + len(items) > self._max_queue_size:
            raise QueueFull(
                f"queue full: {len(self._queue)} items waiting, {len(items)} more would exceed "
                f"max_queue_size={self._max_queue_size}; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
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
            live = [p for p in self._take_batch(loop.time()) if not p.future.done()]
            if not live:
                self._slots.release()
                continue
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
        try:
            results: Sequence[O | BaseException] = await running
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        except (Exception, asyncio.CancelledError) as error:  # the whole batch failed: every caller learns why
            # (a CancelledError too: one from the handler's own calls, say, must not leave the callers waiting)
            results = [error] * len(batch)
        finally:
            self._slots.release()  # before delivering: the next batch starts ahead of the callers' wake-ups
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


async def _failed(error: Exception) -> Sequence[Any]:
    raise error
