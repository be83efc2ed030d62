"""Tracing benchmark (JSON): the classifier with tracing off (no OTLP endpoint: nothing installed) against the same
classifier with tracing on (spans of every call, its queue wait, batch and onnxruntime run, sent over OTLP to a
receiver), every trace sampled and 10% of them (the deployments' setting), single-text Classify at concurrency 32,
in alternating windows of one run. Each pass runs the three in another order (the first window of a pass runs on
a machine the previous one left busy), and each pass's ratios compare its own windows; the target applies to their
median. The receiver runs in a process of its own, as a collector would, on the same cores.
Target: tracing on keeps >= 0.95 of the throughput with it off.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check, highest_version
from export.defaults import INTENT
from services.dev.launcher import service
from services.dev.otlp_receiver import otlp_receiver

CONCURRENCY = 32
# Off (no endpoint), on with every trace sampled, on with 10% of them.
SAMPLERS: dict[str, dict[str, str] | None] = {
    "off": None,
    "on_all_sampled": {"OTEL_TRACES_SAMPLER": "always_on"},
    "on_10_percent": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}
QUIET = ["--metrics-port", "0", "--log-level", "warning"]


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Children started in the block inherit these variables."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextmanager
def receiver_process() -> Iterator[tuple[str, Callable[[], int]]]:
    """The OTLP receiver in a process of its own, so that decoding what it is sent does not take the load
    generator's GIL: yields its endpoint and a function that counts the spans it received."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve_receiver, args=(theirs,), daemon=True)
    process.start()
    endpoint = ours.recv()

    def received() -> int:
        ours.send("count")
        return int(ours.recv())

    try:
        yield endpoint, received
    finally:
        ours.send("stop")
        process.join(10)


def _serve_receiver(connection: Connection) -> None:
    with otlp_receiver() as (receiver, endpoint):
        connection.send(endpoint)
        while connection.recv() == "count":
            connection.send(len(receiver.spans()))


def run(models: Path, name: str, seconds: float, passes: int) -> dict[str, Any]:
    highest_version(models, name)  # exits naming the fix when the model is missing
    flags = ["--models", str(models), "--model-names", name, *QUIET]
    windows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in SAMPLERS}
    with ExitStack() as stack:
        endpoint, received = stack.enter_context(receiver_process())
        addresses = {}
        for mode, sampler in SAMPLERS.items():
            settings = {} if sampler is None else {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, **sampler}
            with environment(**settings):
                addresses[mode] = stack.enter_context(service("services.classifier", *flags))
        modes = list(addresses)
        for index in range(passes):
            for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
                address = addresses[mode]
                print(f"[bench] tracing {mode}", file=sys.stderr, flush=True)
                options = LoadOptions(
                    target=address, model=name, concurrency=CONCURRENCY, duration_s=seconds, progress=False
                )
                windows[mode].append(asyncio.run(run_load(options)))
        spans = received()
    ratios = {
        mode: [n["throughput_rps"] / f["throughput_rps"] for f, n in zip(windows["off"], windows[mode], strict=True)]
        for mode in SAMPLERS
        if mode != "off"
    }
    return {
        "model": name,
        "concurrency": CONCURRENCY,
        "windows": {mode: [_brief(w) for w in runs] for mode, runs in windows.items()},
        "vs_off": {mode: [round(r, 3) for r in values] for mode, values in ratios.items()},
        "vs_off_median": {mode: round(statistics.median(values), 3) for mode, values in ratios.items()},
        "spans_received": spans,
        "targets": {f"{mode}_vs_off": check(statistics.median(v), ">=", 0.95) for mode, v in ratios.items()},
    }


def _brief(window: dict[str, Any]) -> dict[str, Any]:
    return {"throughput_rps": window["throughput_rps"], "latency_ms": window["latency_ms"]}


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.tracing",
        description=__doc__.split("\n\n")[0],
        name=INTENT,
        name_help="classifier model",
        seconds=10.0,
        add_arguments=_add_passes,
    )


def _add_passes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--passes", type=int, default=6, help="rounds of the three windows, each in another order")


if __name__ == "__main__":
    sys.exit(main())
