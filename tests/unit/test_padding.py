"""Length grouping: every sequence in exactly one run, runs of similar lengths, the least modelled cost."""

from __future__ import annotations

import itertools
import random

import pytest

from services.core.padding import length_groups, spread


def cost(lengths: list[int], groups: list[list[int]], overhead: float) -> float:
    return sum(overhead + len(group) * max(lengths[i] for i in group) for group in groups)


def brute_force_best(lengths: list[int], overhead: float) -> float:
    """The least cost over every way to cut the sorted lengths into contiguous runs."""
    ordered = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        runs, run = [], [ordered[0]]
        for length, cut in zip(ordered[1:], cuts, strict=True):
            if cut:
                runs.append(run)
                run = []
            run.append(length)
        runs.append(run)
        best = min(best, sum(overhead + len(r) * max(r) for r in runs))
    return best


@pytest.mark.parametrize("overhead", [0.0, 3.0, 12.0, 100.0])
def test_groups_cover_every_index_once_at_the_least_cost(overhead: float) -> None:
    rng = random.Random(7)
    for _ in range(40):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 9))]
        groups = length_groups(lengths, overhead)
        assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
        assert cost(lengths, groups, overhead) == pytest.approx(brute_force_best(lengths, overhead))


def test_runs_go_shortest_first_and_do_not_interleave() -> None:
    lengths = [50, 3, 48, 4, 5, 52]
    groups = length_groups(lengths, 10.0)
    assert [sorted(lengths[i] for i in group) for group in groups] == [[3, 4, 5], [48, 50, 52]]


def test_no_overhead_gives_one_run_per_length_and_a_large_one_a_single_run() -> None:
    lengths = [7, 3, 7, 3, 9]
    assert sorted(sorted(lengths[i] for i in g) for g in length_groups(lengths, 0.0)) == [[3, 3], [7, 7], [9]]
    assert [sorted(g) for g in length_groups(lengths, 1e9)] == [[0, 1, 2, 3, 4]]
    assert length_groups([], 5.0) == []


def test_negative_overhead_is_refused() -> None:
    with pytest.raises(ValueError, match="run_overhead_tokens"):
        length_groups([1, 2], -1.0)


def test_spread_halves_the_costliest_run_until_every_worker_has_one_and_orders_costliest_first() -> None:
    lengths = [10, 10, 10, 10, 40]
    runs = spread([[0, 1, 2, 3], [4]], lengths, workers=3)
    assert sorted(i for run in runs for i in run) == [0, 1, 2, 3, 4]
    assert [len(run) * max(lengths[i] for i in run) for run in runs] == [40, 20, 20]
    assert spread([[0, 1]], [5, 9], workers=4) == [[1], [0]]  # one row per run is as far as it goes
    assert spread([[0, 1, 2]], [5, 6, 7], workers=1) == [[0, 1, 2]]  # one worker: the grouping stands
