"""Embedding benchmark (JSON): the served `minilm-embed` model's Embed against the in-process limit of the same
graph, in one run.

(a) in-process onnxruntime at every batch size over the workload texts (bench.export_limits), measured before and
    after (b), each batch size at its best of the two,
(b) the classifier service's Embed at concurrency 1 and 32 (single-text requests, closed loop).
The highest version is measured, as served by default. A batch-invariant service runs a dynamically quantized
model (the default v2) one text per run, so its reference is (a) at batch 1; an fp32 model batches, and its
reference is (a) at its best batch.
Target: (b)@32 >= 0.90 x the reference.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from bench.export_limits import best_of, classifier_limits
from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check, highest_version
from export.defaults import EMBED
from services.dev.launcher import service

CONCURRENCIES = (1, 32)


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    version, folder, manifest = highest_version(models, name)
    print(f"[bench] (a) in-process limit of {name} v{version}", file=sys.stderr, flush=True)
    limit_before = classifier_limits(folder, manifest, seconds=max(2.0, seconds / 3), threads=0)
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]

    def load(address: str, concurrency: int) -> dict[str, Any]:
        print(f"[bench] (b) Embed at concurrency {concurrency}", file=sys.stderr, flush=True)
        options = LoadOptions(
            target=address, rpc="embed", model=name, concurrency=concurrency, duration_s=seconds, warmup_s=2.0
        )
        return asyncio.run(run_load(options))

    with service("services.classifier", *flags) as address:
        served = {str(c): load(address, c) for c in CONCURRENCIES}
    print(f"[bench] (a) in-process limit of {name} v{version}, again", file=sys.stderr, flush=True)
    limit_after = classifier_limits(folder, manifest, seconds=max(2.0, seconds / 3), threads=0)
    limit = best_of(limit_before, limit_after)
    one_text_per_run = manifest.quantizes_activations_per_run
    reference = limit["batches"]["1"]["sequences_per_s"] if one_text_per_run else limit["best_sequences_per_s"]
    return {
        "model": f"{name}/{version}",
        "quantization": manifest.quantization.get("method", "none"),
        "reference": "in-process at batch 1 (one text per run)" if one_text_per_run else "in-process at its best batch",
        "limit_in_process": limit,
        "limit_in_process_before_and_after": [limit_before, limit_after],
        "served": served,
        "targets": {"c32_vs_reference": check(served["32"]["throughput_rps"] / reference, ">=", 0.90)},
    }


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.embed",
        description=__doc__.split("\n\n")[0],
        name=EMBED,
        name_help="embedding model to benchmark",
        seconds=10.0,
    )


if __name__ == "__main__":
    sys.exit(main())
