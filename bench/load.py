"""Load generator: `python -m bench.load --target HOST:PORT --rpc RPC ...` for any ecomserve service.

Closed loop (N callers, each sends its next request when the last one answers) or open loop (`--rate R`: Poisson
arrivals at R requests/s, whatever the latency). `classify` sends texts from the bundled workload of e-commerce
customer messages and reviews, `embed` the same texts to an embedding model's Embed, `v2-infer` the same texts to
the Open Inference Protocol's ModelInfer (a BYTES `text` tensor); `generate-stream` sends
product-description and reply-draft requests (chat messages) and measures time to first token and the gaps between
streamed tokens; `route-message` sends the workload's messages to the gateway's RouteMessage with `--api-key`;
`chat-completions` streams the same requests as generate-stream from any OpenAI-compatible server (`--target
http://HOST:PORT`, `--api-key` as its Bearer key), so that ecomserve and other servers are measured the same way.
Calls that start during `--warmup` are not counted.
Prints a progress line every second on stderr and the report as JSON on stdout (and to `--json FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc
from inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

from export.defaults import EMBED, INTENT
from export.samples import customer_messages
from services.core.wire import DEFAULT_GENERATOR_MODEL

RPCS = ("classify", "embed", "v2-infer", "generate-stream", "route-message", "chat-completions")
DEFAULT_MODELS = {"classify": INTENT, "v2-infer": INTENT, "route-message": INTENT, "embed": EMBED}
# Open loop keeps at most this many calls outstanding so an overloaded server cannot exhaust the client.
MAX_OUTSTANDING = 10_000


def workload(name: str) -> list[str]:
    text = resources.files("bench").joinpath("workload", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LoadOptions:
    target: str
    rpc: str = "classify"
    concurrency: int = 8
    duration_s: float = 10.0
    warmup_s: float = 2.0
    ramp_up_s: float = 0.0
    rate: float | None = None
    model: str = INTENT
    texts_per_request: int = 1
    top_k: int = 3
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    timeout_s: float = 60.0
    seed: int = 0
    progress: bool = True
    api_key: str = ""


Call = Callable[[], Awaitable[None]]


@dataclass
class _Tally:
    measure_from: float
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    error_latencies: dict[str, list[float]] = field(default_factory=dict)
    # generate-stream only
    ttfts: list[float] = field(default_factory=list)
    inter_token: list[float] = field(default_factory=list)
    per_output_token: list[float] = field(default_factory=list)
    tokens: int = 0
    measure_until: float = float("inf")
    drained_s: float = 0.0  # after the window, until the last call it started ended

    def record(self, started: float, code: str) -> None:
        if started < self.measure_from:
            return
        self.codes[code] += 1
        elapsed = time.perf_counter() - started
        if code == "OK":
            self.latencies.append(elapsed)
        else:
            self.error_latencies.setdefault(code, []).append(elapsed)


async def run_load(options: LoadOptions) -> dict[str, Any]:
    """Drive the target and return the report (throughput, latency percentiles in ms, status codes)."""
    if options.rpc not in RPCS:
        raise ValueError(f"unknown --rpc {options.rpc!r}; supported: {', '.join(RPCS)}")
    rng = random.Random(options.seed)
    # A full collection over everything imported stalls this loop for tens of ms and would show up as the
    # server's tail latency: freeze what exists now, so that collections only walk what the run creates.
    gc.collect()
    gc.freeze()
    async with _connect(options) as connection:
        started = time.perf_counter()
        tally = _Tally(measure_from=started + options.warmup_s)
        stop_at = tally.measure_from + options.duration_s
        tally.measure_until = stop_at
        call = BUILDERS[options.rpc](connection, options, rng, tally)
        progress = asyncio.ensure_future(_report_progress(tally, stop_at)) if options.progress else None
        if options.rate:
            await _open_loop(call, options.rate, stop_at, rng)
        else:
            await _closed_loop(call, options.concurrency, stop_at, options.ramp_up_s)
        if progress:
            progress.cancel()
        tally.drained_s = max(0.0, time.perf_counter() - stop_at)
    return _summary(options, tally)


def _connect(options: LoadOptions) -> Any:
    """A gRPC channel to HOST:PORT, or for chat-completions an HTTP session to the base URL of an OpenAI API."""
    if options.rpc == "chat-completions":
        headers = {"authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=MAX_OUTSTANDING))
    return grpc.aio.insecure_channel(options.target)


def _classify_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    texts = customer_messages()

    async def call() -> None:
        request = classifier_pb2.ClassifyRequest(
            model=options.model, texts=rng.sample(texts, options.texts_per_request), top_k=options.top_k
        )
        await _timed(tally, lambda: stub.Classify(request, timeout=options.timeout_s))

    return call


def _embed_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
    texts = customer_messages()

    async def call() -> None:
        request = classifier_pb2.EmbedRequest(model=options.model, texts=rng.sample(texts, options.texts_per_request))
        await _timed(tally, lambda: stub.Embed(request, timeout=options.timeout_s))

    return call


def _v2_infer_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
    texts = customer_messages()

    async def call() -> None:
        request = grpc_predict_v2_pb2.ModelInferRequest(model_name=options.model)
        chosen = rng.sample(texts, options.texts_per_request)
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(chosen)])
        tensor.contents.bytes_contents.extend(text.encode() for text in chosen)
        request.parameters["top_k"].int64_param = options.top_k
        await _timed(tally, lambda: stub.ModelInfer(request, timeout=options.timeout_s))

    return call


async def _timed(tally: _Tally, start: Callable[[], Awaitable[Any]]) -> None:
    """Start one unary call and record its latency and final status."""
    begun = time.perf_counter()
    try:
        await start()
        tally.record(begun, "OK")
    except grpc.aio.AioRpcError as error:
        tally.record(begun, error.code().name)


def _route_message_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    """The gateway's RouteMessage: one workload message per call, with the API key."""
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    texts = customer_messages()
    metadata = (("x-api-key", options.api_key),) if options.api_key else ()

    async def call() -> None:
        request = gateway_pb2.RouteMessageRequest(message=rng.choice(texts))
        await _timed(tally, lambda: stub.RouteMessage(request, timeout=options.timeout_s, metadata=metadata))

    return call


def _generate_stream_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    prompts = workload("generation.txt")

    async def call() -> None:
        request = generator_pb2.GenerateRequest(
            model=options.model,
            messages=[generator_pb2.ChatMessage(role="user", content=rng.choice(prompts))],
            sampling=generator_pb2.SamplingParameters(
                max_new_tokens=options.max_new_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                repetition_penalty=options.repetition_penalty,
                seed=rng.getrandbits(32),
            ),
        )
        begun = time.perf_counter()
        arrivals: list[float] = []
        tokens = 0
        try:
            async for message in stub.GenerateStream(request, timeout=options.timeout_s):
                arrivals.append(time.perf_counter())
                tokens = message.usage.completion_tokens or tokens
        except grpc.aio.AioRpcError as error:
            tally.record(begun, error.code().name)
            return
        _record_stream(tally, begun, arrivals, tokens)

    return call


def _chat_completions_call(
    session: aiohttp.ClientSession, options: LoadOptions, rng: random.Random, tally: _Tally
) -> Call:
    """Streaming POST {target}/v1/chat/completions of an OpenAI-compatible server (ecomserve's gateway, vLLM,
    llama.cpp's server, ...), with the same prompts and sampling as generate-stream."""
    prompts = workload("generation.txt")
    url = options.target.rstrip("/") + "/v1/chat/completions"

    async def call() -> None:
        body = {
            "model": options.model,
            "messages": [{"role": "user", "content": rng.choice(prompts)}],
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "seed": rng.getrandbits(31),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        begun = time.perf_counter()
        arrivals: list[float] = []
        tokens = 0
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=options.timeout_s)) as reply:
                if reply.status != 200:
                    tally.record(begun, f"HTTP_{reply.status}")
                    return
                async for line in reply.content:
                    data = line.decode().strip().removeprefix("data: ")
                    if not line.startswith(b"data: ") or data == "[DONE]":
                        continue
                    chunk = json.loads(data)
                    if chunk.get("choices"):
                        arrivals.append(time.perf_counter())
                    tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        except (aiohttp.ClientError, TimeoutError) as error:
            tally.record(begun, type(error).__name__)
            return
        _record_stream(tally, begun, arrivals, tokens)

    return call


def _record_stream(tally: _Tally, begun: float, arrivals: list[float], tokens: int) -> None:
    """A finished stream: `arrivals` of its messages, `tokens` generated in all."""
    tally.record(begun, "OK")
    # Throughput counts tokens that arrived inside the measured window, whenever their call started: each
    # message carries one token, the final one also those that added no text (end of text, held back).
    per_message = [1] * (len(arrivals) - 1) + [max(1, tokens - len(arrivals) + 1)]
    tally.tokens += sum(
        n for n, at in zip(per_message, arrivals, strict=True) if tally.measure_from <= at < tally.measure_until
    )
    if begun >= tally.measure_from and arrivals:
        tally.ttfts.append(arrivals[0] - begun)
        tally.inter_token.extend(b - a for a, b in itertools.pairwise(arrivals))
        if tokens > 1:
            tally.per_output_token.append((arrivals[-1] - arrivals[0]) / (tokens - 1))


BUILDERS = {
    "classify": _classify_call,
    "embed": _embed_call,
    "v2-infer": _v2_infer_call,
    "generate-stream": _generate_stream_call,
    "route-message": _route_message_call,
    "chat-completions": _chat_completions_call,
}


async def _closed_loop(call: Any, concurrency: int, stop_at: float, ramp_up_s: float) -> None:
    """N callers; with a ramp-up they start evenly spread over it, so calls of similar length (generation to
    max_new_tokens) do not stay in lockstep waves that only a synchronised benchmark would produce."""

    async def caller(index: int) -> None:
        await asyncio.sleep(ramp_up_s * index / concurrency)
        while time.perf_counter() < stop_at:
            await call()

    await asyncio.gather(*(caller(i) for i in range(concurrency)))


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
    report = {
        "target": options.target,
        "rpc": options.rpc,
        "mode": "open" if options.rate else "closed",
        "concurrency": None if options.rate else options.concurrency,
        "rate_rps": options.rate,
        "texts_per_request": options.texts_per_request,
        "top_k": options.top_k,
        "duration_s": options.duration_s,
        "requests_ok": len(tally.latencies),
        "drained_s": round(tally.drained_s, 3),
        "throughput_rps": round(len(tally.latencies) / options.duration_s, 2),
        "latency_ms": latency_summary_ms(tally.latencies),
        "codes": dict(tally.codes),
        "error_latency_ms": {code: latency_summary_ms(times) for code, times in tally.error_latencies.items()},
    }
    if options.rpc in ("generate-stream", "chat-completions"):
        report.update(
            {
                "max_new_tokens": options.max_new_tokens,
                "tokens_in_window": tally.tokens,
                "tokens_per_s": round(tally.tokens / options.duration_s, 2),
                "ttft_ms": latency_summary_ms(tally.ttfts),
                "inter_token_ms": latency_summary_ms(tally.inter_token),
                "time_per_output_token_ms": latency_summary_ms(tally.per_output_token),
            }
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        required=True,
        help="HOST:PORT of a classifier, generator or gateway; for chat-completions the base URL http://HOST:PORT",
    )
    parser.add_argument("--rpc", default="classify", choices=RPCS, help="which RPC to drive")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: concurrent callers")
    parser.add_argument("--rate", type=float, help="open loop: mean requests per second (Poisson arrivals)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (after warm-up)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load not counted")
    parser.add_argument(
        "--ramp-up", type=float, default=0.0, help="closed loop: spread the callers' starts over this many seconds"
    )
    parser.add_argument(
        "--model",
        help=f"model to request (default: intent, minilm-embed for embed, {DEFAULT_GENERATOR_MODEL} for generation)",
    )
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each Classify or Embed")
    parser.add_argument("--top-k", type=int, default=3, help="labels per text in each answer (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generate-stream: tokens per request")
    parser.add_argument("--temperature", type=float, default=0.7, help="generate-stream: sampling temperature")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ECOMSERVE_API_KEY", ""),
        help="route-message, chat-completions: the gateway API key [env ECOMSERVE_API_KEY]",
    )
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
                ramp_up_s=args.ramp_up,
                rate=args.rate,
                model=args.model or DEFAULT_MODELS.get(args.rpc, DEFAULT_GENERATOR_MODEL),
                texts_per_request=args.texts_per_request,
                top_k=args.top_k,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                timeout_s=args.timeout,
                api_key=args.api_key,
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
