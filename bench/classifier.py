"""Classifier benchmark (JSON): the served int8 `intent` model against the in-process limit and against a plain
unbatched server on the same model, in one run.

(a) in-process onnxruntime at its best batch size over the workload texts (bench.export_limits), measured before
    and after (b) and (p), each batch size at its best of the two,
(b) the service at concurrency 1, 8, 32 and 64 (single-text requests, closed loop), in windows that alternate with
(p) a plain unbatched grpc.aio server (bench.plain_server: tokenize and run in the default executor, nothing else)
    at the same concurrency, PASSES times each, the two taking turns to go first,
(c) the same service with max_batch_size=1 at concurrency 32, and for reference also with one single-text batch
    per core in flight (the unbatched service at its best on this machine).
Targets: against (p), throughput >= 1.0x at concurrency 1 with p50 at most 0.3 ms above it, >= 1.3x at 32 and 64,
p99 lower at every concurrency (each the median over the passes); (b)@32 >= (a) at batch 1 (the limit of a
batch-invariant int8 model); (b)@32 >= 1.25 x (c).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.export_limits import best_of, classifier_limits
from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check, highest_version
from export.defaults import INTENT
from services.dev.launcher import service

CONCURRENCIES = (1, 8, 32, 64)


PASSES = 2


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    version, folder, manifest = highest_version(models, name)
    print(f"[bench] (a) in-process limit of {name} v{version}", file=sys.stderr, flush=True)
    limit_before = classifier_limits(folder, manifest, seconds=max(2.0, seconds / 3), threads=0)
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]

    def load(address: str, concurrency: int, what: str) -> dict[str, Any]:
        print(f"[bench] {what} at concurrency {concurrency}", file=sys.stderr, flush=True)
        options = LoadOptions(target=address, model=name, concurrency=concurrency, duration_s=seconds, warmup_s=2.0)
        return asyncio.run(run_load(options))

    served: dict[str, list[dict[str, Any]]] = {str(c): [] for c in CONCURRENCIES}
    plain: dict[str, list[dict[str, Any]]] = {str(c): [] for c in CONCURRENCIES}
    with (
        service("services.classifier", *flags) as address,
        service("bench.plain_server", "--models", str(models), "--name", name) as plain_address,
    ):
        for index in range(PASSES):
            for c in CONCURRENCIES:
                # The servers take turns to go first, so that a drift of this VM's speed favours neither.
                pair = [(served, address, "(b) ecomserve"), (plain, plain_address, "(p) plain server")]
                for results, target, what in pair if index % 2 == 0 else pair[::-1]:
                    results[str(c)].append(load(target, c, what))
    print(f"[bench] (a) in-process limit of {name} v{version}, again", file=sys.stderr, flush=True)
    limit_after = classifier_limits(folder, manifest, seconds=max(2.0, seconds / 3), threads=0)
    limit = best_of(limit_before, limit_after)
    with service("services.classifier", *flags, "--max-batch-size", "1") as address:
        unbatched = load(address, 32, "(c) max_batch_size 1")
    cores = str(os.cpu_count() or 1)
    with service("services.classifier", *flags, "--max-batch-size", "1", "--max-concurrent-batches", cores) as address:
        unbatched_parallel = load(address, 32, "(c) max_batch_size 1, one batch per core")

    against_plain = {c: _versus(served[c], plain[c]) for c in served}
    at32 = statistics.median(w["throughput_rps"] for w in served["32"])
    batch1_rate = limit["batches"]["1"]["sequences_per_s"]
    return {
        "model": f"{name}/{version}",
        "quantization": manifest.quantization.get("method", "none"),
        "limit_in_process": limit,
        "limit_in_process_before_and_after": [limit_before, limit_after],
        "served": served,
        "plain_server": plain,
        "served_vs_plain": against_plain,
        "served_max_batch_size_1_c32": unbatched,
        "served_max_batch_size_1_one_batch_per_core_c32": unbatched_parallel,
        "c32_vs_limit_at_best_batch": round(at32 / limit["best_sequences_per_s"], 3),
        "targets": {
            "c1_throughput_vs_plain": check(against_plain["1"]["throughput_ratio"], ">=", 1.0),
            "c1_p50_ms_over_plain": check(against_plain["1"]["p50_ms_over"], "<=", 0.3),
            "c32_throughput_vs_plain": check(against_plain["32"]["throughput_ratio"], ">=", 1.3),
            "c64_throughput_vs_plain": check(against_plain["64"]["throughput_ratio"], ">=", 1.3),
            **{f"c{c}_p99_vs_plain": check(against_plain[str(c)]["p99_ratio"], "<", 1.0) for c in CONCURRENCIES},
            # A batch-invariant service runs a dynamically quantized model one text per run (see the README): its
            # answers are those of the in-process limit at batch 1, which is then the fair reference.
            "c32_vs_limit_at_batch_1": check(at32 / batch1_rate, ">=", 1.0),
            "c32_vs_unbatched": check(at32 / unbatched["throughput_rps"], ">=", 1.25),
        },
    }


def _versus(served: list[dict[str, Any]], plain: list[dict[str, Any]]) -> dict[str, Any]:
    """Served against plain, window pair by window pair (each pair ran back to back); the medians."""
    pairs = list(zip(served, plain, strict=True))
    throughput = [s["throughput_rps"] / p["throughput_rps"] for s, p in pairs]
    p50_over = [s["latency_ms"]["p50"] - p["latency_ms"]["p50"] for s, p in pairs]
    p99 = [s["latency_ms"]["p99"] / p["latency_ms"]["p99"] for s, p in pairs]
    return {
        "throughput_ratio": round(statistics.median(throughput), 3),
        "p50_ms_over": round(statistics.median(p50_over), 3),
        "p99_ratio": round(statistics.median(p99), 3),
        "per_pass": [
            {"throughput_ratio": round(t, 3), "p50_ms_over": round(d, 3), "p99_ratio": round(r, 3)}
            for t, d, r in zip(throughput, p50_over, p99, strict=True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.classifier",
        description=__doc__.split("\n\n")[0],
        name=INTENT,
        name_help="classifier to benchmark (its highest version)",
        seconds=10.0,
    )


if __name__ == "__main__":
    sys.exit(main())
