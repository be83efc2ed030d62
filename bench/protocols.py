"""Standard-protocol benchmark (JSON): each standard surface against the native gRPC path to the same model, in
alternating windows of one run.

(a) the Open Inference Protocol's ModelInfer on the classifier against Classify, straight to the classifier,
    single-text requests at concurrency 32 (`--name`, default intent);
(b) the gateway's OpenAI /v1/chat/completions (streamed) against GenerateStream straight to the generator, 16
    streams of 64 new tokens (the default generator), when the repository has the generator.
Targets: (a) and (b) >= 0.9 of native throughput (requests/s for (a), tokens/s for (b)), each the median over
the passes.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.load import LoadOptions, run_load
from bench.targets import benchmark_main, check, highest_version
from export.defaults import INTENT
from services.core.manifest import version_folders
from services.core.wire import DEFAULT_GENERATOR_MODEL
from services.dev.launcher import free_port, service

PASSES = 2
CLASSIFY_CONCURRENCY = 32
STREAMS = 16
QUIET = ["--metrics-port", "0", "--log-level", "warning"]


def run(models: Path, name: str, seconds: float) -> dict[str, Any]:
    highest_version(models, name)  # exits naming the fix when the model is missing
    report: dict[str, Any] = {"open_inference_protocol": _v2_against_classify(models, name, seconds)}
    targets = {"v2_vs_classify_c32": check(report["open_inference_protocol"]["ratio"], ">=", 0.9)}
    if version_folders(models, DEFAULT_GENERATOR_MODEL):
        report["openai"] = _openai_against_generate_stream(models, seconds)
        targets["openai_vs_generate_stream_16_streams"] = check(report["openai"]["ratio"], ">=", 0.9)
    report["targets"] = targets
    return report


def _load(options: LoadOptions) -> dict[str, Any]:
    print(f"[bench] {options.rpc} x {options.concurrency}", file=sys.stderr, flush=True)
    return asyncio.run(run_load(options))


def _v2_against_classify(models: Path, name: str, seconds: float) -> dict[str, Any]:
    windows: dict[str, list[dict[str, Any]]] = {"classify": [], "v2-infer": []}
    with service("services.classifier", "--models", str(models), "--model-names", name, *QUIET) as address:
        for _ in range(PASSES):
            for rpc in windows:
                options = LoadOptions(
                    target=address, rpc=rpc, model=name, concurrency=CLASSIFY_CONCURRENCY, duration_s=seconds
                )
                windows[rpc].append(_load(options))
    ratios = [
        v["throughput_rps"] / c["throughput_rps"] for c, v in zip(windows["classify"], windows["v2-infer"], strict=True)
    ]
    return {"windows": windows, "ratios": [round(r, 3) for r in ratios], "ratio": round(statistics.median(ratios), 3)}


def _openai_against_generate_stream(models: Path, seconds: float) -> dict[str, Any]:
    api_key = secrets.token_urlsafe(16)
    http_port = free_port()
    windows: dict[str, list[dict[str, Any]]] = {"generate-stream": [], "chat-completions": []}
    flags = ["--models", str(models), "--model-names", DEFAULT_GENERATOR_MODEL, *QUIET]
    classifier_flags = ["--models", str(models), "--model-names", INTENT, *QUIET]
    # The gateway needs a classifier to report SERVING, though the chat completions never reach it.
    with service("services.generator", *flags) as generator, service("services.classifier", *classifier_flags) as cls:
        gateway_flags = ["--classifier", cls, "--generator", generator, "--http-port", str(http_port)]
        keys = ["--api-keys", f"bench={api_key}", "--rate-limit-per-s", "0"]
        with service("services.gateway", *QUIET, *gateway_flags, *keys):
            targets = {"generate-stream": generator, "chat-completions": f"http://127.0.0.1:{http_port}"}
            for _ in range(PASSES):
                for rpc, target in targets.items():
                    options = LoadOptions(
                        target=target,
                        rpc=rpc,
                        model=DEFAULT_GENERATOR_MODEL,
                        concurrency=STREAMS,
                        duration_s=seconds,
                        ramp_up_s=2.0,
                        api_key=api_key,
                    )
                    windows[rpc].append(_load(options))
    native, openai = windows["generate-stream"], windows["chat-completions"]
    ratios = [o["tokens_per_s"] / n["tokens_per_s"] for n, o in zip(native, openai, strict=True)]
    return {"windows": windows, "ratios": [round(r, 3) for r in ratios], "ratio": round(statistics.median(ratios), 3)}


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.protocols",
        description=__doc__.split("\n\n")[0],
        name=INTENT,
        name_help="classifier model for the v2 comparison",
        seconds=10.0,
    )


if __name__ == "__main__":
    sys.exit(main())
