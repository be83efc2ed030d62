"""Marketing-copy benchmark (JSON): WriteMarketingCopy with 8 variants in one call against 8 DescribeProduct calls
of the same size one after another, through the gateway to the default generator, in alternating rounds of one run.

Both sides ask for the same words (the email_body channel and DescribeProduct both budget 1.6 tokens per word)
with fixed seeds; a text may end before its budget, so completion tokens are reported beside the wall times.
Target: the one call >= 3x faster than the sequential calls (median of the rounds' wall-time ratios).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from bench.targets import check, highest_version
from export.defaults import INTENT
from services.core.wire import DEFAULT_GENERATOR_MODEL
from services.dev.launcher import service

VARIANTS = 8
ROUNDS = 3
QUIET = ["--metrics-port", "0", "--log-level", "warning"]
PRODUCT = {
    "title": "Merino wool hiking socks",
    "category": "socks",
    "attributes": [
        gateway_pb2.ProductAttribute(key="material", value="merino wool"),
        gateway_pb2.ProductAttribute(key="pack", value="3 pairs"),
    ],
}


def run(models: Path, name: str, words: int) -> dict[str, Any]:
    highest_version(models, name)  # exits naming the fix when the model is missing
    api_key = secrets.token_urlsafe(16)
    generator_flags = ["--models", str(models), "--model-names", name, *QUIET]
    classifier_flags = ["--models", str(models), "--model-names", INTENT, *QUIET]
    rounds = []
    with (
        service("services.generator", *generator_flags) as generator,
        service("services.classifier", *classifier_flags) as classifier,
    ):
        gateway_flags = [
            "--classifier",
            classifier,
            "--generator",
            generator,
            "--generator-model",
            name,
            "--http-port",
            "-1",
        ]
        keys = ["--api-keys", f"bench={api_key}", "--rate-limit-per-s", "0"]
        with (
            service("services.gateway", *QUIET, *gateway_flags, *keys) as gateway,
            grpc.insecure_channel(gateway) as channel,
        ):
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            metadata = (("x-api-key", api_key),)
            _one_call(stub, metadata, words, seed=0)  # warm-up: first calls pay for lazy allocations
            for round_index in range(ROUNDS):
                seed = 1000 * (round_index + 1)
                print(f"[bench] round {round_index + 1}: {VARIANTS} variants, then {VARIANTS} calls", file=sys.stderr)
                together = _one_call(stub, metadata, words, seed)
                one_by_one = _sequential_calls(stub, metadata, words, seed)
                together["speedup"] = round(one_by_one["wall_s"] / together["wall_s"], 2)
                together["tokens_per_s_ratio"] = round(together["tokens_per_s"] / one_by_one["tokens_per_s"], 2)
                rounds.append({"one_call": together, "sequential": one_by_one})
    speedup = statistics.median(r["one_call"]["speedup"] for r in rounds)
    return {
        "model": name,
        "variants": VARIANTS,
        "max_words": words,
        "rounds": rounds,
        "speedup": speedup,
        "targets": {"one_call_vs_sequential": check(speedup, ">=", 3.0)},
    }


def _one_call(stub: gateway_pb2_grpc.GatewayServiceStub, metadata: Any, words: int, seed: int) -> dict[str, Any]:
    request = gateway_pb2.WriteMarketingCopyRequest(
        **PRODUCT, channel="email_body", max_words=words, variants=VARIANTS, seed=seed
    )
    started = time.perf_counter()
    *_, last = stub.WriteMarketingCopy(request, metadata=metadata, timeout=600)
    wall_s = time.perf_counter() - started
    assert len(last.variants) == VARIANTS
    tokens = sum(variant.usage.completion_tokens for variant in last.variants)
    return {"wall_s": round(wall_s, 2), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall_s, 1)}


def _sequential_calls(
    stub: gateway_pb2_grpc.GatewayServiceStub, metadata: Any, words: int, seed: int
) -> dict[str, Any]:
    tokens = 0
    started = time.perf_counter()
    for index in range(VARIANTS):
        request = gateway_pb2.DescribeProductRequest(**PRODUCT, max_words=words, seed=seed + index)
        tokens += stub.DescribeProduct(request, metadata=metadata, timeout=600).usage.completion_tokens
    wall_s = time.perf_counter() - started
    return {"wall_s": round(wall_s, 2), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.marketing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=DEFAULT_GENERATOR_MODEL, help="generator model")
    parser.add_argument(
        "--max-words", type=int, default=80, help="words asked for per text (DescribeProduct's default)"
    )
    args = parser.parse_args(argv)
    print(json.dumps(run(args.models, args.name, args.max_words), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
