"""Load generator: `python -m bench.load --target HOST:PORT --rpc classify --concurrency N --duration S`.

Closed loop (N callers, each sends its next request when the last one answers) or open loop (`--rate R`:
Poisson arrivals at R requests/s, whatever the latency). Texts come from the bundled workload of e-commerce
customer messages and reviews. Calls that start during `--warmup` are not counted. Prints a progress line every
second on stderr and the report as JSON on stdout (and to `--json FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

# Open loop keeps at most this many calls outstanding so an overloaded server cannot exhaust the client.
MAX_OUTSTANDING = 10_000


def workload(name: str = "messages.txt") -> list[str]:
    text = resources.files("bench").joinpath("workload", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LoadOptions:
    target: str
    rpc: str = "classify"
    concurrency: int = 8
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rate: float | None = None
    model: str = "intent"
    texts_per_request: int = 1
    top_k: int = 3
    timeout_s: float = 10.0
    seed: int = 0
    progress: bool = True


@dataclass
class _Tally:
    measure_from: float
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    def record(self, started: float, code: str) -> None:
        if started < self.measure_from:
            return
        self.codes[code] += 1
        if code == "OK":
            self.latencies.append(time.perf_counter() - started)


async def run_load(options: LoadOptions) -> dict[str, Any]:
    """Drive the target and return the report (throughput, latency percentiles in ms, status codes)."""
    if options.rpc != "classify":
        raise ValueError(f"unknown --rpc {options.rpc!r}; supported: classify")
    texts = workload()
    rng = random.Random(options.seed)
    async with grpc.aio.insecure_channel(options.target) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        started = time.perf_counter()
        tally = _Tally(measure_from=started + options.warmup_s)
        stop_at = tally.measure_from + options.duration_s

        async def call() -> None:
            request = classifier_pb2.ClassifyRequest(
                model=options.model, texts=rng.sample(texts, options.texts_per_request), top_k=options.top_k
            )
            begun = time.perf_counter()
            try:
                await stub.Classify(request, timeout=options.timeout_s)
                tally.record(begun, "OK")
            except grpc.aio.AioRpcError as error:
                tally.record(begun, error.code().name)

        progress = asyncio.ensure_future(_report_progress(tally, stop_at)) if options.progress else None
        if options.rate:
            await _open_loop(call, options.rate, stop_at, rng)
        else:
            await _closed_loop(call, options.concurrency, stop_at)
        if progress:
            progress.cancel()
    return _summary(options, tally)


async def _closed_loop(call: Any, concurrency: int, stop_at: float) -> None:
    async def caller() -> None:
        while time.perf_counter() < stop_at:
            await call()

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def _open_loop(call: Any, rate: float, stop_at: float, rng: random.Random) -> None:
    outstanding: set[asyncio.Task[None]] = set()
    next_at = time.perf_counter()
    while next_at < stop_at:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(outstanding) < MAX_OUTSTANDING:
            task = asyncio.ensure_future(call())
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        next_at += rng.expovariate(rate)
    if outstanding:
        await asyncio.gather(*outstanding)


async def _report_progress(tally: _Tally, stop_at: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        phase = "warm-up" if now < tally.measure_from else f"{max(0.0, stop_at - now):4.0f} s left"
        done = len(tally.latencies)
        rate = done / max(1e-9, now - tally.measure_from) if now > tally.measure_from else 0.0
        errors = sum(n for code, n in tally.codes.items() if code != "OK")
        print(
            f"\r[load] {phase}: {done} ok ({rate:7.1f}/s), {errors} errors",
            end="",
            file=sys.stderr,
            flush=True,
        )


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_summary_ms(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    summary = {f"p{int(q * 100)}": round(percentile(ordered, q) * 1000, 3) for q in (0.5, 0.9, 0.95, 0.99)}
    summary["max"] = round(ordered[-1] * 1000, 3) if ordered else float("nan")
    summary["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else float("nan")
    return summary


def _summary(options: LoadOptions, tally: _Tally) -> dict[str, Any]:
    if options.progress:
        print(file=sys.stderr)
    return {
        "target": options.target,
        "rpc": options.rpc,
        "mode": "open" if options.rate else "closed",
        "concurrency": None if options.rate else options.concurrency,
        "rate_rps": options.rate,
        "texts_per_request": options.texts_per_request,
        "top_k": options.top_k,
        "duration_s": options.duration_s,
        "requests_ok": len(tally.latencies),
        "throughput_rps": round(len(tally.latencies) / options.duration_s, 2),
        "latency_ms": latency_summary_ms(tally.latencies),
        "codes": dict(tally.codes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of a classifier")
    parser.add_argument("--rpc", default="classify", choices=["classify"], help="which RPC to drive")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: concurrent callers")
    parser.add_argument("--rate", type=float, help="open loop: mean requests per second (Poisson arrivals)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (after warm-up)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load not counted")
    parser.add_argument("--model", default="intent", help="model name to request")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each Classify")
    parser.add_argument("--top-k", type=int, default=3, help="labels per text in each answer (0: all)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds")
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_load(
            LoadOptions(
                target=args.target,
                rpc=args.rpc,
                concurrency=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                rate=args.rate,
                model=args.model,
                texts_per_request=args.texts_per_request,
                top_k=args.top_k,
                timeout_s=args.timeout,
            )
        )
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
