"""Length grouping: which sequences of one batch share an onnxruntime run, so that padding costs less than runs,
and how the runs are spread over parallel inference threads.

A run pads every row to its longest row. On CPU a padded token costs as much as a real one, so one run over texts
of 5 and 60 tokens wastes most of its work; on a GPU a run's fixed cost dominates and padding is nearly free. The
cost of a run is modelled as `run_overhead_tokens + rows x longest`, in token units, and a batch is split into the
runs that minimise the total.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_groups(lengths: Sequence[int], run_overhead_tokens: float) -> list[list[int]]:
    """Indices into `lengths`, grouped into runs (shortest lengths first) at the least modelled cost.

    Exact: the best grouping of sorted lengths is contiguous, found by dynamic programming (O(n^2), n <= batch size).
    `run_overhead_tokens` 0 gives one run per distinct length; a large value gives one run for the whole batch.
    """
    if run_overhead_tokens < 0:
        raise ValueError(f"run_overhead_tokens must be >= 0, got {run_overhead_tokens}")
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    # best[j]: least cost of the j shortest sequences; start[j]: where the last run of that grouping begins.
    best = [0.0] * (len(order) + 1)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        best[end], start[end] = min(
            (best[begin] + run_overhead_tokens + (end - begin) * longest, begin) for begin in range(end)
        )
    groups = []
    end = len(order)
    while end:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]


def spread(groups: list[list[int]], lengths: Sequence[int], workers: int) -> list[list[int]]:
    """The runs to hand to `workers` parallel threads, costliest (rows x longest) first, so that the longest run
    starts at once and the others fill in around it. While there are fewer runs than workers, the costliest run
    with two or more rows is halved (its shorter and its longer half), so that no worker idles."""
    runs = [list(group) for group in groups]

    def cost(run: list[int]) -> int:
        return len(run) * max(lengths[index] for index in run)

    while len(runs) < workers:
        splittable = [run for run in runs if len(run) > 1]
        if not splittable:
            break
        costliest = max(splittable, key=cost)
        runs.remove(costliest)
        ordered = sorted(costliest, key=lambda index: lengths[index])
        half = len(ordered) // 2
        runs += [ordered[:half], ordered[half:]]
    return sorted(runs, key=cost, reverse=True)
