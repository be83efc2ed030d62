"""DynamicBatcher against a fake async handler: full batches, timeouts, bucketing, cancellation, errors."""

from __future__ import annotations

import asyncio

import pytest

from services.core.batcher import BatchHandler, DynamicBatcher, ServiceRate
from services.core.errors import DeadlineExceeded, QueueFull, Unavailable


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def make(handler: BatchHandler[int, int], **overrides: object) -> DynamicBatcher[int, int]:
    options: dict = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue_size": 16, **overrides}
    batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, **options)
    batcher.start()
    return batcher


async def test_full_batch_closes_without_waiting() -> None:
    handler = Recorder()
    batcher = make(handler, max_wait_s=10.0)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 1.0)
    assert results == [0, 10, 20, 30]
    assert handler.batches == [[0, 1, 2, 3]]
    await batcher.aclose()


async def test_partial_batch_closes_after_max_wait() -> None:
    handler = Recorder()
    batcher = make(handler, max_wait_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit_many([1, 2]) == [10, 20]
    assert loop.time() - started >= 0.04
    assert handler.batches == [[1, 2]]
    await batcher.aclose()


async def test_per_item_exceptions_reach_only_their_caller() -> None:
    batcher = make(Recorder())
    ok, bad = await asyncio.gather(batcher.submit(3), batcher.submit(-1), return_exceptions=True)
    assert ok == 30
    assert isinstance(bad, ValueError)
    await batcher.aclose()


async def test_handler_failure_fails_the_whole_batch() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    batcher: DynamicBatcher[int, int] = DynamicBatcher(broken, max_batch_size=2, max_wait_s=0.01, max_queue_size=4)
    batcher.start()
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.aclose()


async def test_queue_full_rejects_the_whole_request_at_once() -> None:
    batcher = make(Recorder(), max_wait_s=10.0, max_batch_size=100, max_queue_size=3)
    first = asyncio.ensure_future(batcher.submit_many([1, 2]))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="max_queue_size=3"):
        await batcher.submit_many([3, 4])
    assert batcher.depth == 2
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await batcher.aclose()


async def test_cancelled_items_leave_the_queue_and_never_run() -> None:
    handler = Recorder()
    drops: list[tuple[str, int]] = []
    batcher = make(handler, max_wait_s=0.2, max_batch_size=8, on_drop=lambda r, n: drops.append((r, n)))
    waiting = asyncio.ensure_future(batcher.submit_many([1, 2]))
    await asyncio.sleep(0.01)
    assert batcher.depth == 2
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert batcher.depth == 0
    assert await batcher.submit(5) == 50
    assert handler.batches == [[5]]
    assert sum(n for reason, n in drops if reason == "cancelled") == 2
    await batcher.aclose()


async def test_expired_items_fail_with_deadline_exceeded_before_running() -> None:
    handler = Recorder(delay=0.1)
    batcher = make(handler, max_batch_size=1, max_wait_s=0.0)
    loop = asyncio.get_running_loop()
    blocker = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(2, deadline=loop.time() + 0.03)
    assert await blocker == 10
    assert handler.batches == [[1]]
    await batcher.aclose()


async def test_bucketing_groups_items_of_similar_size_with_the_oldest() -> None:
    handler = Recorder(delay=0.05)
    batcher = make(handler, max_batch_size=3, max_wait_s=0.0, size_of=lambda i: i)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first batch runs; the rest queue up behind it
    sizes = [50, 1, 52, 2, 51, 3]
    rest = asyncio.gather(*(batcher.submit(s) for s in sizes))
    await asyncio.wait_for(asyncio.gather(first, rest), 2.0)
    assert handler.batches[1][0] == 50 and sorted(handler.batches[1]) == [50, 51, 52]
    assert sorted(handler.batches[2]) == [1, 2, 3]
    await batcher.aclose()


async def test_aclose_runs_queued_items_then_refuses_new_ones() -> None:
    handler = Recorder()
    batcher = make(handler, max_wait_s=10.0, max_batch_size=100)
    queued = asyncio.ensure_future(batcher.submit_many([1, 2, 3]))
    await asyncio.sleep(0.01)
    await batcher.aclose()
    assert await queued == [10, 20, 30]
    with pytest.raises(Unavailable):
        await batcher.submit(4)


async def test_the_next_batch_starts_before_the_last_batch_is_delivered() -> None:
    """A handler that starts its work when called (as the classifier's does) has batch 2 running before batch 1's
    callers resume: the slot is freed and the next batch taken ahead of the deliveries."""
    events: list[str] = []

    def handler(items: list[int]) -> asyncio.Future[list[int]]:
        events.append(f"start {items}")
        done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, done.set_result, [i * 10 for i in items])
        return done

    async def caller(item: int) -> None:
        assert await batcher.submit(item) == item * 10
        events.append(f"done {item}")

    batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, max_batch_size=1, max_wait_s=0.0, max_queue_size=4)
    batcher.start()
    await asyncio.wait_for(asyncio.gather(caller(1), caller(2)), 1.0)
    assert events == ["start [1]", "start [2]", "done 1", "done 2"]
    await batcher.aclose()


async def test_a_handler_that_raises_when_called_fails_its_batch_only() -> None:
    def handler(items: list[int]) -> asyncio.Future[list[int]]:
        if items == [1]:
            raise RuntimeError("cannot start")
        done = asyncio.get_running_loop().create_future()
        done.set_result([i * 10 for i in items])
        return done

    batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, max_batch_size=1, max_wait_s=0.0, max_queue_size=4)
    batcher.start()
    with pytest.raises(RuntimeError, match="cannot start"):
        await batcher.submit(1)
    assert await batcher.submit(2) == 20
    await batcher.aclose()


async def test_a_handler_cancelled_from_within_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    async def cancelled(items: list[int]) -> list[int]:
        raise asyncio.CancelledError()  # e.g. a backend call that was cancelled on the far side

    batcher: DynamicBatcher[int, int] = DynamicBatcher(cancelled, max_batch_size=2, max_wait_s=0.0, max_queue_size=4)
    batcher.start()
    results = await asyncio.wait_for(asyncio.gather(batcher.submit(1), return_exceptions=True), 1.0)
    assert isinstance(results[0], asyncio.CancelledError)
    await batcher.aclose()


async def test_an_expired_item_cancelled_as_the_slot_frees_leaves_the_batcher_running() -> None:
    """Its future is cancelled before the batcher's clean-up callback has run: failing it again killed the loop."""
    release = asyncio.Event()

    async def handler(items: list[int]) -> list[int | BaseException]:
        await release.wait()
        return [i * 10 for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(handler, max_batch_size=1, max_wait_s=0, max_queue_size=4)
    batcher.start()
    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch holds the only slot
    expiring = asyncio.ensure_future(batcher.submit(2, deadline=loop.time() + 0.01))
    await asyncio.sleep(0.05)
    release.set()
    loop.call_soon(expiring.cancel)  # after the slot frees, before the batcher takes its next batch
    assert await first == 10
    with pytest.raises(asyncio.CancelledError):
        await expiring
    assert await asyncio.wait_for(batcher.submit(3), 1.0) == 30
    await batcher.aclose()


def test_service_rate_counts_items_per_busy_second_only() -> None:
    rate = ServiceRate(horizon_s=1000.0)
    assert rate.per_s is None
    rate.busy(10.0, False)  # idle until 10 s: not counted
    rate.busy(10.5, True)
    rate.completed(50)
    rate.busy(20.0, False)  # idle again
    rate.busy(20.5, True)
    rate.completed(50)
    assert rate.per_s == pytest.approx(100.0, rel=1e-3)


async def test_items_that_could_not_finish_before_their_deadline_are_refused_at_once() -> None:
    handler = Recorder(delay=0.05)  # 4 items per 50 ms: about 80 items/s
    batcher = make(handler, max_wait_s=0.0)
    await asyncio.gather(*(batcher.submit(i) for i in range(16)))  # measures the rate
    assert batcher.rate.per_s == pytest.approx(80, rel=0.5)
    loop = asyncio.get_running_loop()
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(12)]  # ~0.15 s of work ahead
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        batcher.admit(1, deadline=loop.time() + 0.05)  # raised before any wait: the caller knows at once
    assert "overloaded" in str(refused.value)
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    assert await batcher.submit(7, deadline=loop.time() + 5.0) == 70  # a caller that can wait is served
    await asyncio.gather(*queued)
    await batcher.aclose()


async def test_max_queue_time_refuses_callers_without_a_deadline_too() -> None:
    batcher = make(Recorder(delay=0.05), max_wait_s=0.0, max_queue_time_s=0.1)  # about 8 items at 80/s
    await asyncio.gather(*(batcher.submit(i) for i in range(16)))
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="max_queue_time_s"):
        await batcher.submit_many([99] * 4)
    await asyncio.gather(*queued)
    assert await batcher.submit(1) == 10  # the queue drained: admitted again
    await batcher.aclose()


async def test_items_that_fail_fast_do_not_count_as_served() -> None:
    async def refuses_negatives_at_once(items: list[int]) -> list[int | BaseException]:
        if items[0] < 0:  # a backend refusing under overload: fast, and nothing served
            return [QueueFull("refused")] * len(items)
        await asyncio.sleep(0.05)
        return [i * 10 for i in items]

    batcher = make(refuses_negatives_at_once, max_wait_s=0.0, max_queue_size=64)
    await asyncio.gather(*(batcher.submit(i) for i in range(16)))  # served: about 80 items/s
    await asyncio.gather(*(batcher.submit(-1) for _ in range(48)), return_exceptions=True)
    assert batcher.rate.per_s == pytest.approx(80, rel=0.5)  # counting the refusals would make it thousands
    loop = asyncio.get_running_loop()
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(12)]  # ~0.15 s of work ahead
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="overloaded"):
        batcher.admit(1, deadline=loop.time() + 0.05)
    await asyncio.gather(*queued)
    await batcher.aclose()


async def test_an_idle_batcher_admits_whatever_rate_it_measured() -> None:
    batcher = make(Recorder())
    batcher.rate = ServiceRate()
    batcher.rate.busy(0.0, False)
    batcher.rate.busy(10.0, True)  # ten busy seconds, one item served: 0.1 items/s
    batcher.rate.completed(1)
    loop = asyncio.get_running_loop()
    batcher.admit(1, deadline=loop.time() + 0.05)  # nothing ahead: only a run can correct the estimate
    assert await batcher.submit(2, deadline=loop.time() + 1.0) == 20
    await batcher.aclose()
