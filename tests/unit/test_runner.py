"""The inference threads' setup: the idle scheduling policy, and one CPU each when they match the CPUs the process
may use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from services.core.runner import InferenceThreads

T = TypeVar("T")
pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")


def in_every_thread(count: int, threads: InferenceThreads, probe: Callable[[], T]) -> list[T]:
    """Start a pool of `count` threads set up by `threads` and run `probe` once in each of them."""
    all_started = threading.Barrier(count)

    def probed() -> T:
        all_started.wait(timeout=10)  # every thread of the pool exists (and ran the initializer) before any probes
        return probe()

    with ThreadPoolExecutor(count, initializer=threads.initializer) as pool:
        return list(pool.map(lambda _: probed(), range(count)))


def each_threads_cpus_and_policy(count: int, pin: bool) -> list[tuple[frozenset[int], int]]:
    """From inside each of `count` inference threads: its CPUs and its scheduling policy."""
    return in_every_thread(
        count,
        InferenceThreads(count, pin),
        lambda: (frozenset(os.sched_getaffinity(0)), os.sched_getscheduler(threading.get_native_id())),
    )


def test_as_many_threads_as_allowed_cpus_take_one_cpu_each() -> None:
    allowed = os.sched_getaffinity(0)
    callers_policy = os.sched_getscheduler(0)
    reports = each_threads_cpus_and_policy(len(allowed), pin=True)
    assert sorted(sorted(cpus) for cpus, _ in reports) == [[cpu] for cpu in sorted(allowed)]
    assert {policy for _, policy in reports} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == callers_policy  # the policy is per thread: the caller's is untouched


@pytest.mark.parametrize("extra_threads, pin", [(1, True), (0, False)])
def test_threads_float_over_every_allowed_cpu_otherwise(extra_threads: int, pin: bool) -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    reports = each_threads_cpus_and_policy(len(allowed) + extra_threads, pin=pin)
    assert {cpus for cpus, _ in reports} == {allowed}


def test_a_pinned_thread_floats_for_a_run_on_every_core_until_pinned_again() -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    threads = InferenceThreads(len(allowed), pin=True)

    def float_then_pin() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
        pinned = frozenset(os.sched_getaffinity(0))
        threads.float_freely()
        floating = frozenset(os.sched_getaffinity(0))
        threads.pin()
        return pinned, floating, frozenset(os.sched_getaffinity(0))

    reports = in_every_thread(len(allowed), threads, float_then_pin)
    assert sorted(sorted(pinned) for pinned, _, _ in reports) == [[cpu] for cpu in sorted(allowed)]
    assert all(floating == allowed and again == pinned for pinned, floating, again in reports)
