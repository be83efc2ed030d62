"""Load generator: `python -m bench.load --target HOST:PORT --rpc RPC ...` for any ecomserve service.

Closed loop (N callers, each sends its next request when the last one answers) or open loop (`--rate R`: Poisson
arrivals at R requests/s, whatever the latency). `classify` sends texts from the bundled workload of e-commerce
customer messages and reviews, `embed` the same texts to an embedding model's Embed, `v2-infer` the same texts to
the Open Inference Protocol's ModelInfer (a BYTES `text` tensor); `generate-stream` sends
product-description and reply-draft requests (chat messages) and measures time to first token and the gaps between
streamed tokens; `route-message` sends the workload's messages to the gateway's RouteMessage with `--api-key`;
`chat-completions` streams the same requests as generate-stream from any OpenAI-compatible server (`--target
http://HOST:PORT`, `--api-key` as its Bearer key), so that ecomserve and other servers are measured the same way.
The other gateway operations: `classify-texts`, `embed-texts`, `describe-product`, `draft-reply` (streamed: time to
first piece and gaps), `write-marketing-copy` (streamed, `--variants`) and `analyze-reviews` (`--texts-per-request`
reviews). `--tls-ca-file` (with `--tls-cert-file`/`--tls-key-file` for mutual TLS) connects over TLS, also to an
https:// target. Calls that start during `--warmup` are not counted.
Prints a progress line every second on stderr and the report as JSON on stdout (and to `--json FILE`); exits 1 when
no call succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
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

RPCS = (
    "classify",
    "embed",
    "v2-infer",
    "generate-stream",
    "route-message",
    "classify-texts",
    "embed-texts",
    "describe-product",
    "draft-reply",
    "write-marketing-copy",
    "analyze-reviews",
    "chat-completions",
)
STREAMS = ("generate-stream", "draft-reply", "write-marketing-copy", "chat-completions")  # token reports
DEFAULT_MODELS = {
    "classify": INTENT,
    "v2-infer": INTENT,
    "route-message": INTENT,
    "classify-texts": INTENT,
    "analyze-reviews": INTENT,
    "embed": EMBED,
    "embed-texts": EMBED,
}
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
    variants: int = 3
    tls: Tls | None = None
    unique_prompts: bool = False  # generation: every message starts with its own ticket number


@dataclass(frozen=True)
class Tls:
    """The CA that signed the target's certificate, and a client certificate for mutual TLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca_file.read_bytes(),
            self.key_file.read_bytes() if self.key_file else None,
            self.cert_file.read_bytes() if self.cert_file else None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


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
        ssl_context = options.tls.ssl_context() if options.tls else None
        # A connection per request: llama.cpp's server drops a kept-alive connection after a streamed answer, and a
        # pooled connection only finds out when its next request fails.
        connector = aiohttp.TCPConnector(
            limit=MAX_OUTSTANDING, ssl=ssl_context if ssl_context else True, force_close=True
        )
        return aiohttp.ClientSession(headers=headers, connector=connector)
    if options.tls:
        return grpc.aio.secure_channel(options.target, options.tls.grpc_credentials())
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


PRODUCTS = [
    ("Merino wool hiking socks", "socks", "material", "merino wool"),
    ("Trail running shoe", "running shoes", "weight", "260 g"),
    ("Stainless steel water bottle", "drinkware", "capacity", "750 ml"),
    ("Noise-cancelling headphones", "audio", "battery", "30 hours"),
]


def _words(options: LoadOptions) -> int:
    """The word budget of a gateway operation whose tokens come near --max-new-tokens (1.6 tokens a word, + 8)."""
    return max(10, min(300, int((options.max_new_tokens - 8) / 1.6)))


def _product(rng: random.Random) -> dict[str, Any]:
    title, category, key, value = rng.choice(PRODUCTS)
    return {"title": title, "category": category, "attributes": [gateway_pb2.ProductAttribute(key=key, value=value)]}


def _gateway_request(options: LoadOptions, rng: random.Random, texts: list[str]) -> Any:
    """The request of the gateway operation --rpc, with texts from the workload and a random seed."""
    chosen = rng.sample(texts, options.texts_per_request)
    seed = rng.getrandbits(32)
    match options.rpc:
        case "route-message":
            return gateway_pb2.RouteMessageRequest(message=chosen[0])
        case "classify-texts":
            return gateway_pb2.ClassifyTextsRequest(model=options.model, texts=chosen, top_k=options.top_k)
        case "embed-texts":
            return gateway_pb2.EmbedTextsRequest(model=options.model, texts=chosen)
        case "describe-product":
            return gateway_pb2.DescribeProductRequest(**_product(rng), max_words=_words(options), seed=seed)
        case "draft-reply":
            return gateway_pb2.DraftReplyRequest(message=chosen[0], max_words=_words(options), seed=seed)
        case "write-marketing-copy":
            return gateway_pb2.WriteMarketingCopyRequest(
                **_product(rng), channel="email_body", max_words=_words(options), variants=options.variants, seed=seed
            )
        case "analyze-reviews":
            reviews = [gateway_pb2.Review(text=text) for text in chosen]
            return gateway_pb2.AnalyzeReviewsRequest(reviews=reviews, model=options.model, top_k=options.top_k)
    raise ValueError(f"{options.rpc} is not a gateway operation")


GATEWAY_METHODS = {
    "route-message": "RouteMessage",
    "classify-texts": "ClassifyTexts",
    "embed-texts": "EmbedTexts",
    "describe-product": "DescribeProduct",
    "draft-reply": "DraftReply",
    "write-marketing-copy": "WriteMarketingCopy",
    "analyze-reviews": "AnalyzeReviews",
}


def _gateway_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    """A gateway operation with the API key: unary ones timed to their answer, streamed ones as streams."""
    rpc = getattr(gateway_pb2_grpc.GatewayServiceStub(channel), GATEWAY_METHODS[options.rpc])
    metadata = (("x-api-key", options.api_key),) if options.api_key else ()
    texts = customer_messages()

    async def call() -> None:
        request = _gateway_request(options, rng, texts)
        if options.rpc in STREAMS:
            await _streamed(tally, lambda: rpc(request, timeout=options.timeout_s, metadata=metadata))
        else:
            await _timed(tally, lambda: rpc(request, timeout=options.timeout_s, metadata=metadata))

    return call


def _generate_stream_call(channel: grpc.aio.Channel, options: LoadOptions, rng: random.Random, tally: _Tally) -> Call:
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    prompts = workload("generation.txt")

    async def call() -> None:
        request = generator_pb2.GenerateRequest(
            model=options.model,
            messages=[generator_pb2.ChatMessage(role="user", content=_generation_message(prompts, rng, options))],
            sampling=generator_pb2.SamplingParameters(
                max_new_tokens=options.max_new_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                repetition_penalty=options.repetition_penalty,
                seed=rng.getrandbits(32),
            ),
        )
        await _streamed(tally, lambda: stub.GenerateStream(request, timeout=options.timeout_s))

    return call


async def _streamed(tally: _Tally, start: Callable[[], AsyncIterator[Any]]) -> None:
    """Start one server-streaming call and record when its messages arrived and the tokens it generated."""
    begun = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    try:
        async for message in start():
            arrivals.append(time.perf_counter())
            tokens = _completion_tokens(message) or tokens
    except grpc.aio.AioRpcError as error:
        tally.record(begun, error.code().name)
        return
    _record_stream(tally, begun, arrivals, tokens)


def _completion_tokens(message: Any) -> int:
    """Tokens generated, from a stream's last message: its usage, or its variants' (marketing copy)."""
    if "variants" in message.DESCRIPTOR.fields_by_name:
        return sum(variant.usage.completion_tokens for variant in message.variants)
    return int(message.usage.completion_tokens) if message.HasField("usage") else 0


def _generation_message(prompts: list[str], rng: random.Random, options: LoadOptions) -> str:
    """A workload prompt; with unique_prompts it starts with a random ticket number, so that requests share the
    chat template's tokens but not whole prompts (as different customers' requests do), and a prefix cache gets
    no more credit than it would in production."""
    prompt = rng.choice(prompts)
    return f"Ticket {rng.randrange(10**6):06d}. {prompt}" if options.unique_prompts else prompt


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
            "messages": [{"role": "user", "content": _generation_message(prompts, rng, options)}],
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            # vLLM's, TGI's and ecomserve's name, and llama.cpp's: each server reads one of them.
            "repetition_penalty": options.repetition_penalty,
            "repeat_penalty": options.repetition_penalty,
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
    "chat-completions": _chat_completions_call,
    **dict.fromkeys(GATEWAY_METHODS, _gateway_call),
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
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_summary_ms(latencies: list[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99/max/mean in ms; null (JSON has no NaN) when nothing was measured."""
    ordered = sorted(latencies)
    names = [f"p{int(q * 100)}" for q in (0.5, 0.9, 0.95, 0.99)] + ["max", "mean"]
    if not ordered:
        return dict.fromkeys(names, None)
    values = [percentile(ordered, q) for q in (0.5, 0.9, 0.95, 0.99)] + [ordered[-1], sum(ordered) / len(ordered)]
    return {name: round(value * 1000, 3) for name, value in zip(names, values, strict=True)}


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
    if options.rpc in STREAMS:
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
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="generate-stream, chat-completions: sampling temperature"
    )
    parser.add_argument("--top-p", type=float, default=0.9, help="generate-stream, chat-completions: nucleus top_p")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.2, help="generate-stream: repetition penalty (1: off)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the load's choices and of the sampling seeds")
    parser.add_argument("--variants", type=int, default=3, help="write-marketing-copy: variants per call")
    parser.add_argument(
        "--unique-prompts",
        action="store_true",
        help="generate-stream, chat-completions: start every message with a random ticket number, so requests share "
        "the chat template but not whole prompts (a prefix cache gets no credit for repeated workload lines)",
    )
    parser.add_argument("--tls-ca-file", type=Path, help="connect over TLS, trusting this CA")
    parser.add_argument("--tls-cert-file", type=Path, help="with --tls-ca-file: client certificate (mutual TLS)")
    parser.add_argument("--tls-key-file", type=Path, help="with --tls-cert-file: its private key")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ECOMSERVE_API_KEY", ""),
        help="gateway operations, chat-completions: the gateway API key [env ECOMSERVE_API_KEY]",
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
                top_p=args.top_p,
                repetition_penalty=args.repetition_penalty,
                seed=args.seed,
                timeout_s=args.timeout,
                api_key=args.api_key,
                variants=args.variants,
                unique_prompts=args.unique_prompts,
                tls=Tls(args.tls_ca_file, args.tls_cert_file, args.tls_key_file) if args.tls_ca_file else None,
            )
        )
    )
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not report["requests_ok"]:
        print(f"no call succeeded ({report['codes'] or 'none completed'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
