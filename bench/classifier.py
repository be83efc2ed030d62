"""Classifier benchmark (JSON): the served int8 `intent` model against the in-process limit, in one run.

(a) in-process onnxruntime at its best batch size over the workload texts (bench.export_limits),
(b) the service at concurrency 1, 8, 32 and 64 (single-text requests, closed loop),
(c) the same service with max_batch_size=1 at concurrency 32, and for reference also with one single-text batch
    per core in flight (the unbatched service at its best on this machine).
Targets: (b)@32 >= 0.90 x (a); (b)@32 >= 1.25 x (c); p99@32 <= 1.5 x p50@32; p99@1 <= (a) batch-1 latency + 3 ms.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from bench.export_limits import classifier_limits
from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check
from export.defaults import INTENT
from services.core.manifest import Manifest, version_folders
from services.dev.launcher import service

CONCURRENCIES = (1, 8, 32, 64)


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    versions = version_folders(models, name)
    if not versions:
        raise SystemExit(f"no model {name!r} under {models}; run `python -m export defaults --out {models}`")
    version = max(versions)
    folder = versions[version]
    manifest = Manifest.read(folder)
    print(f"[bench] (a) in-process limit of {name} v{version}", file=sys.stderr, flush=True)
    limit = classifier_limits(folder, manifest, seconds=max(2.0, seconds / 3), threads=0)
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]

    def load(address: str, concurrency: int) -> dict[str, Any]:
        print(f"[bench] concurrency {concurrency}", file=sys.stderr, flush=True)
        options = LoadOptions(target=address, model=name, concurrency=concurrency, duration_s=seconds, warmup_s=2.0)
        return asyncio.run(run_load(options))

    with service("services.classifier", *flags) as address:
        served = {str(c): load(address, c) for c in CONCURRENCIES}
    with service("services.classifier", *flags, "--max-batch-size", "1") as address:
        unbatched = load(address, 32)
    cores = str(os.cpu_count() or 1)
    with service("services.classifier", *flags, "--max-batch-size", "1", "--max-concurrent-batches", cores) as address:
        unbatched_parallel = load(address, 32)

    best = limit["best_sequences_per_s"]
    at32 = served["32"]
    batch1_latency = limit["batches"]["1"]["batch_latency_ms_p50"]
    return {
        "model": f"{name}/{version}",
        "quantization": manifest.quantization.get("method", "none"),
        "limit_in_process": limit,
        "served": served,
        "served_max_batch_size_1_c32": unbatched,
        "served_max_batch_size_1_one_batch_per_core_c32": unbatched_parallel,
        "c32_vs_unbatched_one_batch_per_core": round(at32["throughput_rps"] / unbatched_parallel["throughput_rps"], 3),
        # A batch-invariant service runs a dynamically quantized model one text per run (see the README): its
        # answers are those of the in-process limit at batch 1, which is then the fair reference.
        "c32_vs_limit_at_batch_1": round(at32["throughput_rps"] / limit["batches"]["1"]["sequences_per_s"], 3),
        "targets": {
            "c32_vs_limit": check(at32["throughput_rps"] / best, ">=", 0.90),
            "c32_vs_unbatched": check(at32["throughput_rps"] / unbatched["throughput_rps"], ">=", 1.25),
            "c32_p99_over_p50": check(at32["latency_ms"]["p99"] / at32["latency_ms"]["p50"], "<=", 1.5),
            "c1_p99_ms_vs_batch1_latency_plus_3ms": check(
                served["1"]["latency_ms"]["p99"], "<=", round(batch1_latency + 3.0, 3)
            ),
        },
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
