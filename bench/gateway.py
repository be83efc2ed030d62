"""Gateway benchmark (JSON): what the gateway adds to a classification, and what a second replica brings.

(a) Classify straight to a classifier replica and RouteMessage through the gateway to the same replica, at
concurrency 1 and 32 (single workload messages, top 3 intents both ways): p50/p99 and the p50 overhead;
(b) RouteMessage throughput at concurrency 32 with two classifier replicas behind the gateway vs one.
Target: p50 overhead <= 2 ms at concurrency 1 and 32. Everything runs on this machine, so the gateway, the
replicas and the load generator share its cores: a second replica adds no cores here (see the README).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check
from services.core.manifest import version_folders
from services.launcher import free_port, service

CONCURRENCIES = (1, 32)


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    versions = version_folders(models, name)
    if not versions:
        raise SystemExit(f"no model {name!r} under {models}; run `python -m export defaults --out {models}`")
    api_key = secrets.token_urlsafe(16)
    quiet = ["--metrics-port", "0", "--log-level", "warning"]
    classifier_flags = ["--models", str(models), "--model-names", name, *quiet]

    def load(address: str, rpc: str, concurrency: int) -> dict[str, Any]:
        print(f"[bench] {rpc} at concurrency {concurrency}", file=sys.stderr, flush=True)
        options = LoadOptions(
            target=address, rpc=rpc, model=name, concurrency=concurrency, duration_s=seconds, api_key=api_key
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
        direct = {str(c): load(first, "classify", c) for c in CONCURRENCIES}
        with gateway([first]) as address:
            routed = {str(c): load(address, "route-message", c) for c in CONCURRENCIES}
        second = running.enter_context(service("services.classifier", *classifier_flags))
        with gateway([first, second]) as address:
            two_replicas = load(address, "route-message", 32)

    overhead = {c: routed[c]["latency_ms"]["p50"] - direct[c]["latency_ms"]["p50"] for c in direct}
    return {
        "model": f"{name}/{max(versions)}",
        "direct_classify": direct,
        "through_gateway_route_message": routed,
        "p50_overhead_ms": {c: round(value, 3) for c, value in overhead.items()},
        "p99_overhead_ms": {
            c: round(routed[c]["latency_ms"]["p99"] - direct[c]["latency_ms"]["p99"], 3) for c in direct
        },
        "two_replicas_c32": two_replicas,
        "two_vs_one_replica_throughput": round(two_replicas["throughput_rps"] / routed["32"]["throughput_rps"], 3),
        "targets": {f"c{c}_p50_overhead_ms": check(value, "<=", 2.0) for c, value in overhead.items()},
    }


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.gateway",
        description=__doc__.split("\n\n")[0],
        name="intent",
        name_help="classifier behind the gateway (its highest version)",
        seconds=10.0,
    )


if __name__ == "__main__":
    sys.exit(main())
