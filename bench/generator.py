"""Generator benchmark (JSON): continuous batching against one-at-a-time serving, in one run.

On the generator the demo serves (its highest version), 16 concurrent streams of product-description and
reply-draft requests (bench/workload/generation.txt, each message with its own ticket number so that requests share
the chat template but not whole prompts), max_new_tokens 64, the same sampling everywhere:
(a) this service; also one lone stream, for the TTFT reference, and both again with --prefix-cache-mb 0 (what
    reusing the chat template's KV saves);
(b) the same service with max_running_sequences=1;
(c) a seed-style baseline: Hugging Face transformers `generate` in PyTorch, one request at a time.
Targets: (a) >= 3x (b) and >= 5x (c) in tokens/s; TTFT p99 of (a) <= 3x the lone request's TTFT p50.

`--long-prompts` instead measures what a long prompt costs the streams running beside it: 8 streams decode while a
prompt of about 900 tokens arrives every 2 s, once with the prompt prefilled in one step (--max-prefill-tokens 2048)
and once in chunks (--max-prefill-tokens 256, between which the streams decode); the streams' gaps between tokens
and the long prompts' time to first token, side by side.

`--peer-url http://HOST:PORT/v1/chat/completions` instead compares the generator with another server's
OpenAI-compatible streaming endpoint (llama.cpp's llama-server, vLLM, TGI...) on the same workload and sampling:
windows at 1 and 16 streams, alternating between the two, two passes; the medians and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from bench.load import LoadOptions, latency_summary_ms, run_load, workload
from bench.targets import benchmark_main, check, highest_version
from services.core.manifest import TOKENIZER_FILE, Manifest
from services.core.wire import DEFAULT_GENERATOR_MODEL
from services.dev.launcher import free_port, service

STREAMS = 16
LONG_PROMPT_STREAMS, LONG_PROMPT_TOKENS, LONG_PROMPT_EVERY_S = 8, 600, 4.0
# --max-prefill-tokens of the two long-prompt windows: the whole prompt in one step, and the default chunks.
PREFILL_BUDGETS = {"whole": 2048, "chunked": 256}
MAX_NEW_TOKENS = 64
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2}


def load(address: str, name: str, concurrency: int, duration_s: float, rpc: str = "generate-stream") -> dict[str, Any]:
    """One window of the workload: `concurrency` streams for `duration_s` after a warm-up."""
    print(f"[bench] {address}: {concurrency} stream(s) for {duration_s:.0f} s", file=sys.stderr, flush=True)
    return asyncio.run(run_load(workload_options(address, name, concurrency, duration_s, rpc=rpc)))


def workload_options(address: str, name: str, concurrency: int, duration_s: float, **overrides: Any) -> LoadOptions:
    """The workload's streams: ticketed messages, MAX_NEW_TOKENS and SAMPLING, after a warm-up and a ramp-up."""
    options = LoadOptions(
        target=address,
        rpc="generate-stream",
        model=name,
        concurrency=concurrency,
        duration_s=duration_s,
        warmup_s=8.0,
        ramp_up_s=6.0,
        max_new_tokens=MAX_NEW_TOKENS,
        timeout_s=300.0,
        temperature=SAMPLING["temperature"],
        top_p=SAMPLING["top_p"],
        repetition_penalty=SAMPLING["repetition_penalty"],
        unique_prompts=True,
    )
    return dataclasses.replace(options, **overrides)


def run(
    models: Path, name: str, seconds: float, peer_url: str | None = None, long_prompts: bool = False
) -> dict[str, Any]:
    if peer_url:
        return against_peer(models, name, seconds, peer_url)
    if long_prompts:
        return beside_long_prompts(models, name, seconds)
    version, _, manifest = highest_version(models, name)
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]

    print(f"[bench] (a) {name} v{version}, continuous batching", file=sys.stderr, flush=True)
    metrics_port = free_port()
    with service("services.generator", *flags, "--metrics-port", str(metrics_port)) as address:
        lone = load(address, name, 1, max(10.0, seconds / 2))
        batched = load(address, name, STREAMS, seconds)
        hit_rate = prefix_cache_hit_rate(metrics_port)
    print("[bench] (a) without the prefix cache", file=sys.stderr, flush=True)
    with service("services.generator", *flags, "--prefix-cache-mb", "0") as address:
        lone_uncached = load(address, name, 1, max(10.0, seconds / 2))
        batched_uncached = load(address, name, STREAMS, seconds)
    print("[bench] (b) max_running_sequences=1", file=sys.stderr, flush=True)
    with service("services.generator", *flags, "--max-running-sequences", "1") as address:
        one_at_a_time = load(address, name, STREAMS, seconds)
    print("[bench] (c) transformers generate in PyTorch, one request at a time", file=sys.stderr, flush=True)
    baseline = pytorch_baseline(manifest, seconds)

    tokens = batched["tokens_per_s"]
    return {
        "model": f"{name}/{version}",
        "quantization": manifest.quantization.get("method", "none"),
        "streams": STREAMS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "sampling": SAMPLING,
        "a_continuous_batching": _brief(batched),
        "a_lone_request": _brief(lone),
        "a_without_prefix_cache": _brief(batched_uncached),
        "a_lone_request_without_prefix_cache": _brief(lone_uncached),
        "prefix_cache_hit_rate": hit_rate,
        "prefix_cache_ttft_p50_ratio": {
            "lone": _ratio(lone_uncached["ttft_ms"]["p50"], lone["ttft_ms"]["p50"]),
            f"{STREAMS}_streams": _ratio(batched_uncached["ttft_ms"]["p50"], batched["ttft_ms"]["p50"]),
        },
        "b_max_running_sequences_1": _brief(one_at_a_time),
        "c_pytorch_generate_one_at_a_time": baseline,
        "targets": {
            "a_vs_b_tokens_per_s": check(tokens / one_at_a_time["tokens_per_s"], ">=", 3.0),
            "a_vs_c_tokens_per_s": check(tokens / baseline["tokens_per_s"], ">=", 5.0),
            "a_ttft_p99_vs_lone_ttft_p50": check(batched["ttft_ms"]["p99"] / lone["ttft_ms"]["p50"], "<=", 3.0),
        },
    }


def against_peer(models: Path, name: str, seconds: float, peer_url: str) -> dict[str, Any]:
    """The generator's GenerateStream against a peer's streaming chat completions, window by window."""
    version, _, manifest = highest_version(models, name)
    peer = peer_url.removesuffix("/").removesuffix("/v1/chat/completions")
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]
    windows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    metrics_port = free_port()
    with service("services.generator", *flags, "--metrics-port", str(metrics_port)) as address:
        for _ in range(2):
            for streams in (1, STREAMS):
                pair = windows.setdefault(str(streams), {"ecomserve": [], "peer": []})
                pair["ecomserve"].append(_brief(load(address, name, streams, seconds)))
                pair["peer"].append(_brief(load(peer, name, streams, seconds, rpc="chat-completions")))
        hit_rate = prefix_cache_hit_rate(metrics_port)
    report: dict[str, Any] = {"model": f"{name}/{version}", "quantization": manifest.quantization.get("method")}
    report["prefix_cache_hit_rate"] = hit_rate
    report.update({"peer": peer, "max_new_tokens": MAX_NEW_TOKENS, "sampling": SAMPLING, "windows": windows})
    medians = {streams: {side: _medians(runs) for side, runs in pair.items()} for streams, pair in windows.items()}
    report["medians"] = medians
    one, many = medians["1"], medians[str(STREAMS)]
    report["targets"] = {
        "tokens_per_s_1_stream_vs_peer": check(
            one["ecomserve"]["tokens_per_s"] / one["peer"]["tokens_per_s"], ">=", 1.0
        ),
        f"tokens_per_s_{STREAMS}_streams_vs_peer": check(
            many["ecomserve"]["tokens_per_s"] / many["peer"]["tokens_per_s"], ">=", 1.5
        ),
        "ttft_p50_1_stream_vs_peer": check(one["ecomserve"]["ttft_p50_ms"] / one["peer"]["ttft_p50_ms"], "<=", 1.0),
        f"ttft_p50_{STREAMS}_streams_vs_peer": check(
            many["ecomserve"]["ttft_p50_ms"] / many["peer"]["ttft_p50_ms"], "<=", 1.0
        ),
        f"ttft_p99_{STREAMS}_streams_vs_peer": check(
            many["ecomserve"]["ttft_p99_ms"] / many["peer"]["ttft_p99_ms"], "<=", 1.5
        ),
    }
    return report


def beside_long_prompts(models: Path, name: str, seconds: float) -> dict[str, Any]:
    """The streams' inter-token gaps while long prompts arrive, prefilled whole and in chunks."""
    version, folder, manifest = highest_version(models, name)
    prompt = _long_prompt(folder)
    flags = ["--models", str(models), "--model-names", name, "--metrics-port", "0", "--log-level", "warning"]
    windows = {}
    for label, budget in PREFILL_BUDGETS.items():
        print(f"[bench] --max-prefill-tokens {budget}", file=sys.stderr, flush=True)
        with service("services.generator", *flags, "--max-prefill-tokens", str(budget)) as address:
            windows[label] = asyncio.run(_streams_beside_long_prompts(address, name, seconds, prompt))
    whole, chunked = windows["whole"], windows["chunked"]
    return {
        "model": f"{name}/{version}",
        "quantization": manifest.quantization.get("method", "none"),
        "streams": LONG_PROMPT_STREAMS,
        "long_prompt_every_s": LONG_PROMPT_EVERY_S,
        "max_prefill_tokens": PREFILL_BUDGETS,
        "windows": windows,
        "streams_inter_token_p99_ratio": _ratio(
            whole["streams"]["inter_token_ms"]["p99"], chunked["streams"]["inter_token_ms"]["p99"]
        ),
        "streams_inter_token_max_ratio": _ratio(
            whole["streams"]["inter_token_ms"]["max"], chunked["streams"]["inter_token_ms"]["max"]
        ),
    }


async def _streams_beside_long_prompts(address: str, name: str, seconds: float, prompt: str) -> dict[str, Any]:
    options = workload_options(address, name, LONG_PROMPT_STREAMS, seconds, progress=False)
    streams = asyncio.ensure_future(run_load(options))
    ttfts = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for ticket in itertools.count(1):
            if streams.done():
                break
            request = generator_pb2.GenerateRequest(  # its own start: no prefix of it is cached
                model=name,
                prompt=f"Ticket {ticket}.\n{prompt}",
                sampling=generator_pb2.SamplingParameters(max_new_tokens=1),
            )
            started = time.perf_counter()
            async for _ in stub.GenerateStream(request, timeout=300.0):
                ttfts.append(time.perf_counter() - started)
                break
            await asyncio.sleep(max(0.0, LONG_PROMPT_EVERY_S - (time.perf_counter() - started)))
    report = await streams
    return {
        "streams": _brief(report),
        "long_prompts": {"sent": len(ttfts), "ttft_ms": latency_summary_ms(ttfts)},
    }


def _long_prompt(folder: Path) -> str:
    """Workload messages joined into a prompt of about LONG_PROMPT_TOKENS tokens of the model's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    lines, text = itertools.cycle(workload("generation.txt")), ""
    while len(tokenizer.encode(text).ids) < LONG_PROMPT_TOKENS:
        text += next(lines) + "\n"
    return text


def prefix_cache_hit_rate(metrics_port: int) -> float:
    """Share of the prompt tokens prefilled so far whose KV came from the generator's prefix cache."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    tokens = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "ecomserve_prefix_cache_tokens":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    tokens[sample.labels["outcome"]] += sample.value
    total = tokens["hit"] + tokens["miss"]
    return round(tokens["hit"] / total, 3) if total else 0.0


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "ttft_p50_ms": statistics.median(r["ttft_ms"]["p50"] for r in runs),
        "ttft_p99_ms": statistics.median(r["ttft_ms"]["p99"] for r in runs),
    }


def _ratio(baseline: float | None, improved: float | None) -> float | None:
    """How many times longer a latency was in the baseline window (without the prefix cache, or with the long
    prompt prefilled whole) than in the improved one; null when either window measured none."""
    return round(baseline / improved, 2) if baseline and improved else None


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests_ok", "codes", "tokens_per_s", "ttft_ms", "time_per_output_token_ms", "inter_token_ms")
    return {key: report[key] for key in keys}


def pytorch_baseline(manifest: Manifest, seconds: float) -> dict[str, Any]:
    """transformers generate on the model export started from, one request at a time, for `seconds`."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    from export.generator import load_causal_lm

    source = manifest.source
    if source.get("kind") != "local":
        raise SystemExit(f"{manifest.name} was exported from the hub ({source.get('model')}); the baseline needs it")
    model, tokenizer = load_causal_lm(source["model"], source.get("file"))

    class Clock(BaseStreamer):  # type: ignore[misc]
        """Records when generate hands out each new token (its first put() is the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    prompts = workload("generation.txt")
    rng = random.Random(0)
    eos = manifest.special_tokens.get("eos_token_ids") or None
    ttfts, per_token, tokens = [], [], 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        messages = [{"role": "user", "content": rng.choice(prompts)}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        config = GenerationConfig(
            do_sample=True, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=eos[0] if eos else None
        )
        config.update(**SAMPLING)
        clock = Clock()
        begun = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=clock)
        generated = int(out.shape[1] - ids.shape[1])
        tokens += generated
        token_times = clock.times[1:]
        if token_times:
            ttfts.append(token_times[0] - begun)
        if generated > 1 and len(token_times) > 1:
            per_token.append((token_times[-1] - token_times[0]) / (len(token_times) - 1))
    elapsed = time.perf_counter() - started
    return {
        "requests_ok": len(ttfts),
        "tokens_per_s": round(tokens / elapsed, 2),
        "ttft_ms": latency_summary_ms(ttfts),
        "time_per_output_token_ms": latency_summary_ms(per_token),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(
        run,
        argv,
        prog="python -m bench.generator",
        description=__doc__.split("\n\n")[0],
        name=DEFAULT_GENERATOR_MODEL,
        name_help="generator to benchmark (its highest version)",
        seconds=30.0,
        add_arguments=_peer_argument,
    )


def _peer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--long-prompts",
        action="store_true",
        help="measure instead the running streams' gaps between tokens while long prompts arrive, prefilled whole "
        "and in chunks",
    )
    parser.add_argument(
        "--peer-url",
        help="compare with this OpenAI-compatible streaming endpoint instead, e.g. "
        "http://127.0.0.1:8080/v1/chat/completions (llama.cpp's llama-server on the same GGUF)",
    )


if __name__ == "__main__":
    sys.exit(main())
