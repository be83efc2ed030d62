"""Gateway benchmark (JSON): what the gateway adds to a classification, and what a second replica brings.

(a) Classify straight to a classifier replica and RouteMessage through the gateway to the same replica, at
concurrency 1 and 32 (single workload messages, top 3 intents both ways), in alternating windows (the machine's
drift then hits both alike): p50/p99 per window, and the overhead as the median over rounds of routed minus direct;
(b) RouteMessage throughput at concurrency 32 with two classifier replicas behind the gateway vs one.
Target: p50 overhead <= 2 ms at concurrency 1 and 32. Everything runs on this machine, so the gateway, the
replicas and the load generator share its cores: a second replica adds no cores here (see the README).
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check, highest_version
from export.defaults import INTENT
from services.dev.launcher import free_port, service

CONCURRENCIES = (1, 32)
ROUNDS = 3  # direct and routed windows per concurrency, alternating


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    version, _, _ = highest_version(models, name)
    api_key = secrets.token_urlsafe(16)
    quiet = ["--metrics-port", "0", "--log-level", "warning"]
    classifier_flags = ["--models", str(models), "--model-names", name, *quiet]

    def load(address: str, rpc: str, concurrency: int, duration_s: float) -> dict[str, Any]:
        print(f"[bench] {rpc} at concurrency {concurrency}", file=sys.stderr, flush=True)
        options = LoadOptions(
            target=address, rpc=rpc, model=name, concurrency=concurrency, duration_s=duration_s, api_key=api_key
        )
        return asyncio.run(run_load(options))

    def gateway(replicas: list[str]) -> Any:
        return service(
            "services.gateway",
            *quiet,
            "--http-port",
            str(free_port()),
            "--classifier",
            ",".join(replicas),
            "--generator",
            "",
            "--api-keys",
            f"bench={api_key}",
            "--rate-limit-per-s",
            "0",
        )

    with ExitStack() as running:
        first = running.enter_context(service("services.classifier", *classifier_flags))
        direct: dict[str, list[dict[str, Any]]] = {str(c): [] for c in CONCURRENCIES}
        routed: dict[str, list[dict[str, Any]]] = {str(c): [] for c in CONCURRENCIES}
        with gateway([first]) as address:
            for c in CONCURRENCIES:
                for _ in range(ROUNDS):
                    direct[str(c)].append(load(first, "classify", c, seconds / ROUNDS))
                    routed[str(c)].append(load(address, "route-message", c, seconds / ROUNDS))
        second = running.enter_context(service("services.classifier", *classifier_flags))
        with gateway([first, second]) as address:
            two_replicas = load(address, "route-message", 32, seconds)

    def overheads(percentile: str) -> dict[str, list[float]]:
        return {
            c: [
                round(r["latency_ms"][percentile] - d["latency_ms"][percentile], 3)
                for d, r in zip(direct[c], routed[c], strict=True)
            ]
            for c in direct
        }

    p50, p99 = overheads("p50"), overheads("p99")
    one_replica = statistics.median(window["throughput_rps"] for window in routed["32"])
    return {
        "model": f"{name}/{version}",
        "direct_classify_windows": direct,
        "through_gateway_route_message_windows": routed,
        "p50_overhead_ms_by_round": p50,
        "p99_overhead_ms_by_round": p99,
        "p50_overhead_ms": {c: statistics.median(values) for c, values in p50.items()},
        "p99_overhead_ms": {c: statistics.median(values) for c, values in p99.items()},
        "two_replicas_c32": two_replicas,
        "two_vs_one_replica_throughput": round(two_replicas["throughput_rps"] / one_replica, 3),
        "targets": {f"c{c}_p50_overhead_ms": check(statistics.median(values), "<=", 2.0) for c, values in p50.items()},
    }


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.gateway",
        description=__doc__.split("\n\n")[0],
        name=INTENT,
        name_help="classifier behind the gateway (its highest version)",
        seconds=10.0,
    )


if __name__ == "__main__":
    sys.exit(main())
