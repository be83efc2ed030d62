"""Overload benchmark (JSON): open loop at twice the classifier's measured capacity, with client deadlines, against
the classifier directly and through the gateway, then recovery.

1. capacity: closed loop (concurrency 32, single-text Classify) against the classifier alone, in requests/s;
2. for each target (classifier, gateway RouteMessage) and each deadline (1 s and 10 s): Poisson arrivals at
   `--factor` x capacity for `--seconds`, every call with that deadline;
3. recovery: idle for a moment, then a short closed loop at concurrency 1 must be served, and the processes' resident
   memory must be back near where it was before the overload.
Reported per window: goodput (calls answered OK per second, from the window's start until its last call ended) as
a fraction of capacity, the status codes, p99 of
accepted calls and of refusals (RESOURCE_EXHAUSTED), and unanswered calls: those that waited for their whole
deadline (DEADLINE_EXCEEDED) or were dropped (CANCELLED, UNKNOWN). Goals: goodput >= 0.9 of capacity with 1 s
deadlines; refusals p99 <= 10 ms; accepted p99 within the deadline; no unanswered call; memory within 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.load import LoadOptions, run_load
from bench.targets import check
from export.defaults import INTENT
from services.dev.launcher import service_process

DEADLINES_S = (1.0, 10.0)
UNANSWERED = ("DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN")
CAPACITY_CONCURRENCY = 32


@contextmanager
def started(module: str, *flags: str, log: Path) -> Iterator[tuple[str, int]]:
    """A service on a free loopback port, without /metrics, until the block ends: (HOST:PORT, pid)."""
    with service_process(module, "--metrics-port", "0", *flags, timeout_s=300, log=log) as (address, child):
        yield address, child.pid


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(kib / 1024, 1)


def window(report: dict[str, Any], capacity_rps: float, deadline_s: float) -> dict[str, Any]:
    codes = report["codes"]
    # Calls the window started that ended after it still used the server's time: count that time too.
    goodput = round(report["requests_ok"] / (report["duration_s"] + report["drained_s"]), 2)
    refusals = report["error_latency_ms"].get("RESOURCE_EXHAUSTED", {})
    return {
        "deadline_s": deadline_s,
        "offered_rps": report["rate_rps"],
        "goodput_rps": goodput,
        "goodput_of_capacity": round(goodput / capacity_rps, 3),
        "codes": codes,
        "accepted_latency_ms": report["latency_ms"],
        "refusal_latency_ms": refusals,
        "unanswered": sum(codes.get(code, 0) for code in UNANSWERED),
    }


def run(models: Path, name: str, seconds: float, factor: float) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="ecomserve-overload-"))
    api_key = secrets.token_urlsafe(24)
    keys = logs / "api-keys"
    keys.write_text(f"bench={api_key}\n")
    quiet = ["--log-level", "warning"]

    def load(address: str, rpc: str, **options: Any) -> dict[str, Any]:
        return asyncio.run(
            run_load(LoadOptions(target=address, rpc=rpc, model=name, api_key=api_key, warmup_s=1.0, **options))
        )

    with ExitStack() as running:
        classifier, classifier_pid = running.enter_context(
            started("services.classifier", "--models", str(models), "--model-names", name, *quiet, log=logs / "c.log")
        )
        gateway, gateway_pid = running.enter_context(
            started(
                "services.gateway",
                "--classifier",
                classifier,
                "--generator",
                "",
                "--http-port",
                "-1",
                "--api-keys-file",
                str(keys),
                "--rate-limit-per-s",
                "0",
                *quiet,
                log=logs / "g.log",
            )
        )
        print("[overload] capacity", file=sys.stderr, flush=True)
        capacity = load(classifier, "classify", concurrency=CAPACITY_CONCURRENCY, duration_s=seconds)
        capacity_rps = capacity["throughput_rps"]
        memory_before = {"classifier": resident_mb(classifier_pid), "gateway": resident_mb(gateway_pid)}
        windows: dict[str, dict[str, Any]] = {}
        for target, address, rpc in (("classifier", classifier, "classify"), ("gateway", gateway, "route-message")):
            for deadline_s in DEADLINES_S:
                print(f"[overload] {target}, deadline {deadline_s:g} s", file=sys.stderr, flush=True)
                report = load(address, rpc, rate=factor * capacity_rps, duration_s=seconds, timeout_s=deadline_s)
                windows[f"{target}_deadline_{deadline_s:g}s"] = window(report, capacity_rps, deadline_s)
                time.sleep(2.0)  # whatever is left drains before the next window
        print("[overload] recovery", file=sys.stderr, flush=True)
        time.sleep(3.0)
        recovery = {target: load(address, rpc, concurrency=1, duration_s=3.0) for target, address, rpc in (
            ("classifier", classifier, "classify"), ("gateway", gateway, "route-message"))}  # fmt: skip
        memory_after = {"classifier": resident_mb(classifier_pid), "gateway": resident_mb(gateway_pid)}

    one_second = [w for w in windows.values() if w["deadline_s"] == 1.0]
    recovered = all(set(r["codes"]) == {"OK"} for r in recovery.values())
    memory_growth = max(memory_after[k] / memory_before[k] - 1 for k in memory_before)
    return {
        "model": name,
        "factor": factor,
        "seconds_per_window": seconds,
        "capacity_rps": capacity_rps,
        "windows": windows,
        "recovery": {
            target: {"throughput_rps": r["throughput_rps"], "codes": r["codes"]} for target, r in recovery.items()
        },
        "memory_mb": {"before": memory_before, "after": memory_after},
        "targets": {
            "goodput_of_capacity_1s_deadline": check(min(w["goodput_of_capacity"] for w in one_second), ">=", 0.9),
            "refusal_p99_ms": check(max(w["refusal_latency_ms"].get("p99", 0.0) for w in windows.values()), "<=", 10.0),
            "accepted_p99_within_deadline": check(
                max(w["accepted_latency_ms"]["p99"] / (w["deadline_s"] * 1000) for w in windows.values()), "<=", 1.0
            ),
            "unanswered": check(sum(w["unanswered"] for w in windows.values()), "<=", 0),
            "memory_growth_after_recovery": check(memory_growth, "<=", 0.10),
            "recovered": {"value": recovered, "target": "every call OK", "met": recovered},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=INTENT, help="classifier model to overload")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per window")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of capacity")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.models, args.name, args.seconds, args.factor), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
