"""BatchedEncoder over tiny exported models, no sockets: rows equal plain onnxruntime on each text alone, runs
planned by cost, one run per text where activations are quantized per run, length limits."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from tokenizers import Tokenizer

from services.core.encoder import INLINE_TOKENIZE_CHARS, BatchedEncoder, BatchingOptions
from services.core.errors import InvalidArgument
from services.core.manifest import Manifest
from services.core.repository import ModelVersion
from services.core.runner import OnnxRunner, RuntimeOptions
from tests.fixtures import TEXTS
from tests.onnx_reference import run_alone

# Every test's encoder gets its own metrics label, so counters read back are that test's alone.
SERVICES = (f"unit-encoder-{n}" for n in itertools.count())


class CountingPool(ThreadPoolExecutor):
    """A tokenizer pool that counts the jobs it is given."""

    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(*args, **kwargs)


class CountingRunner(OnnxRunner):
    """A runner that counts its runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, RuntimeOptions("cpu"))
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        self.runs += 1
        return super().run(*args, **kwargs)


@asynccontextmanager
async def running_encoder(
    folder: Path, pool: ThreadPoolExecutor | None = None, solo_runner: OnnxRunner | None = None, **batching: Any
) -> AsyncIterator[tuple[BatchedEncoder, str]]:
    manifest = Manifest.read(folder)
    version = ModelVersion(manifest.name, manifest.version, folder, manifest)
    options = BatchingOptions(
        **{"max_batch_size": 8, "max_queue_delay_ms": 20.0, "max_queue_size": 64, "max_concurrent_batches": 1}
        | batching
    )
    service = next(SERVICES)
    pool = pool or ThreadPoolExecutor(1)
    failures: list[str] = []
    runner = OnnxRunner(version.model_path, RuntimeOptions("cpu"))
    encoder = BatchedEncoder(service, version, runner, options, pool, failures.append, solo_runner=solo_runner)
    await asyncio.to_thread(encoder.warm_up)
    encoder.start_serving()
    try:
        yield encoder, service
    finally:
        await encoder.aclose()
        pool.shutdown()
        assert not failures


def runs_of(service: str, encoder: BatchedEncoder) -> float:
    value = REGISTRY.get_sample_value(
        "ecomserve_inference_runs_total",
        {"service": service, "model": encoder.version.name, "version": str(encoder.version.version)},
    )
    return value or 0.0


async def test_rows_equal_plain_onnxruntime_on_each_text_alone(model_repo: Path) -> None:
    folder = model_repo / "sentiment" / "1"
    async with running_encoder(folder, run_overhead_tokens=1000.0) as (encoder, _):
        # Concurrent requests share padded batches; every row must still be the text's own.
        answers = await asyncio.gather(*(encoder.encode([text], False, None) for text in TEXTS))
    for text, [encoded] in zip(TEXTS, answers, strict=True):
        np.testing.assert_allclose(encoded.output, run_alone(folder, text), atol=1e-5)
        assert not encoded.truncated
        assert encoded.token_count == len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids)


@pytest.mark.parametrize(("overhead", "one_run"), [(1000.0, True), (0.5, False)])
async def test_a_batch_is_cut_into_the_runs_its_cost_model_prefers(
    model_repo: Path, overhead: float, one_run: bool
) -> None:
    """A costly run (large overhead) puts the whole batch in one run; a cheap one gives every length its own."""
    folder = model_repo / "sentiment" / "1"
    async with running_encoder(folder, run_overhead_tokens=overhead) as (encoder, service):
        before = runs_of(service, encoder)
        await encoder.encode(TEXTS, False, None)
        runs = runs_of(service, encoder) - before
    lengths = {len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(t).ids) for t in TEXTS}
    assert runs == (1 if one_run else len(lengths))


async def test_models_that_quantize_per_run_get_one_run_per_text(model_repo: Path) -> None:
    folder = model_repo / "intent" / "2"
    assert Manifest.read(folder).quantizes_activations_per_run
    async with running_encoder(folder, run_overhead_tokens=1000.0) as (encoder, service):
        assert encoder.one_text_per_run
        before = runs_of(service, encoder)
        encoded = await encoder.encode(TEXTS, False, None)
        assert runs_of(service, encoder) - before == len(TEXTS)
    for text, row in zip(TEXTS, encoded, strict=True):
        np.testing.assert_array_equal(row.output, run_alone(folder, text))


async def test_over_long_text_is_refused_or_truncated_as_asked(model_repo: Path) -> None:
    folder = model_repo / "sentiment" / "1"
    limit = Manifest.read(folder).max_sequence_length
    long_text = " ".join(["refund"] * (limit + 10))
    async with running_encoder(folder) as (encoder, _):
        with pytest.raises(InvalidArgument, match=f"texts\\[1\\].*max_sequence_length of {limit}"):
            await encoder.encode(["hello", long_text], False, None)
        [short, cut] = await encoder.encode(["hello", long_text], True, None)
    assert not short.truncated
    assert cut.truncated and cut.token_count == limit


async def test_short_requests_are_tokenized_on_the_loop_and_long_ones_in_the_pool(model_repo: Path) -> None:
    folder = model_repo / "sentiment" / "1"
    pool = CountingPool()
    long_texts = [f"{text} " * (INLINE_TOKENIZE_CHARS // len(text)) for text in TEXTS[:2]]
    assert sum(map(len, TEXTS[:3])) <= INLINE_TOKENIZE_CHARS < sum(map(len, long_texts))
    async with running_encoder(folder, pool, max_queue_delay_ms=0.0) as (encoder, _):
        short = await encoder.encode(TEXTS[:3], False, None)
        assert pool.jobs == 0
        long = await encoder.encode(long_texts, True, None)
        assert pool.jobs == 1
    for text, encoded in zip(TEXTS[:3], short, strict=True):
        np.testing.assert_allclose(encoded.output, run_alone(folder, text), atol=1e-5)
    limit = Manifest.read(folder).max_sequence_length
    assert all(encoded.truncated and encoded.token_count == limit for encoded in long)


def batches_of(service: str, encoder: BatchedEncoder) -> tuple[float, float]:
    labels = {"service": service, "model": encoder.version.name, "version": str(encoder.version.version)}
    return tuple(  # type: ignore[return-value]
        REGISTRY.get_sample_value(name, labels) or 0.0
        for name in ("ecomserve_batches_total", "ecomserve_batch_items_total")
    )


async def test_a_lone_text_runs_at_once_and_concurrent_texts_still_batch(model_repo: Path) -> None:
    """A single text that finds the batcher idle and a thread free does not wait for batch-mates (a batch of one);
    texts that arrive while the thread is busy queue and batch together."""
    folder = model_repo / "sentiment" / "1"
    options = {"max_queue_delay_ms": 5000.0, "max_batch_size": len(TEXTS) - 1, "inference_threads": 1}
    async with running_encoder(folder, **options) as (encoder, service):
        loop = asyncio.get_running_loop()
        started = loop.time()
        [row] = await encoder.encode([TEXTS[0]], False, None)
        assert loop.time() - started < 2.5  # far below the 5 s a queued text would wait for its batch to fill
        assert batches_of(service, encoder) == (1.0, 1.0)
        np.testing.assert_allclose(row.output, run_alone(folder, TEXTS[0]), atol=1e-5)
        answers = await asyncio.gather(*(encoder.encode([text], False, None) for text in TEXTS))
        batches, items = batches_of(service, encoder)
        # The first text of the burst finds the thread free and runs alone; a tiny model may even finish it before
        # the burst's next text looks, which then runs alone too. Whatever found the thread busy batched together.
        assert items == 1.0 + len(TEXTS)
        assert batches < 1.0 + len(TEXTS)
    for text, [encoded] in zip(TEXTS, answers, strict=True):
        np.testing.assert_allclose(encoded.output, run_alone(folder, text), atol=1e-5)


async def test_the_solo_runner_waits_for_a_second_lone_request_in_a_row(model_repo: Path) -> None:
    """Its threads spin on after a run: good for the next lone request, bad for batches that follow one that found
    the server idle between batches."""
    folder = model_repo / "sentiment" / "1"
    solo = CountingRunner(folder / "model.onnx")
    async with running_encoder(folder, solo_runner=solo) as (encoder, _):
        solo.runs = 0  # warm-up ran it once
        await encoder.encode([TEXTS[0]], False, None)
        assert solo.runs == 0
        [row] = await encoder.encode([TEXTS[1]], False, None)
        assert solo.runs == 1
        await asyncio.gather(*(encoder.encode([text], False, None) for text in TEXTS))  # some of these batch
        runs_after_burst = solo.runs
        await encoder.encode([TEXTS[0]], False, None)
        assert solo.runs == runs_after_burst
    np.testing.assert_allclose(row.output, run_alone(folder, TEXTS[1]), atol=1e-5)
