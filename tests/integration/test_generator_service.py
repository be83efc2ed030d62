"""Generator service on a real server over tiny exported Llama and GPT-2 models: greedy parity with PyTorch,
batch invariance, stop sequences, limits, seeds, cancellation, the waiting bound and every error row."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from ecomserve.generator.v1 import generator_pb2 as pb
from ecomserve.generator.v1 import generator_pb2_grpc
from prometheus_client import REGISTRY

from services.core.runner import RunStop, RunStopped
from services.generator.batch import DecodeBatch
from services.generator.executor import StepExecutor
from services.generator.model import GeneratorModel, Prompt
from services.generator.policy import Decode, Prefill
from services.generator.prefix_cache import BLOCK_TOKENS, PrefixCache
from services.generator.sampling import SamplingParams
from services.generator.sequence import Sequence
from tests.integration.conftest import generator_stub_for

PROMPTS = (
    "where is my order",
    "write short description stainless steel water bottle",
    "hello i want a refund please the blender came broken",
)
LONG_PROMPT = " ".join(["can talk real person great headphones battery lasts all day"] * 4)


def request(model: str = "llama", prompt: str = PROMPTS[0], **sampling: Any) -> pb.GenerateRequest:
    stop = sampling.pop("stop", [])
    return pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParameters(stop=stop, **sampling))


async def stream_text(stub: generator_pb2_grpc.GeneratorServiceStub, req: pb.GenerateRequest) -> tuple[list[str], Any]:
    deltas, final = [], None
    async for message in stub.GenerateStream(req):
        deltas.append(message.text)
        final = message
    return deltas, final


def torch_greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """(text, completion tokens) of Hugging Face generate on the original PyTorch model, one prompt alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    eos = tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    tokens = out[0, ids.shape[1] :].tolist()
    if eos in tokens:
        tokens = tokens[: tokens.index(eos) + 1]
    return tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)


def greedy_sequence(model: GeneratorModel, prompt: list[int], max_new_tokens: int) -> Sequence:
    """A greedy sequence of `model` for the executor tests, which drive its steps by hand."""
    return Sequence(
        prompt,
        SamplingParams(max_new_tokens=max_new_tokens),
        model.tokenizer,
        model.eos_ids,
        model.vocab_size,
        model.max_sequence_length,
    )


def metric(name: str, **labels: str) -> float:
    """A metric of the `llama` v1 generator."""
    return REGISTRY.get_sample_value(name, {"service": "generator", "model": "llama", "version": "1", **labels}) or 0.0


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
async def test_greedy_output_is_identical_to_pytorch_generate(
    generator, causal_lms: dict[str, Path], architecture: str
) -> None:
    async with generator() as app, generator_stub_for(app) as stub:
        for prompt in PROMPTS:
            expected_text, expected_tokens = torch_greedy(causal_lms[architecture], prompt, 16)
            response = await stub.Generate(request(architecture, prompt, max_new_tokens=16))
            assert response.text == expected_text, prompt
            assert response.usage.completion_tokens == expected_tokens
            assert response.model == architecture and response.version == 1
            deltas, final = await stream_text(stub, request(architecture, prompt, max_new_tokens=16))
            assert "".join(deltas) == expected_text
            assert final.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_END_OF_TEXT)
            assert final.usage.prompt_tokens == response.usage.prompt_tokens > 0


async def test_a_sequence_decodes_the_same_while_others_join_and_leave(generator) -> None:
    async with generator(max_running_sequences=8) as app, generator_stub_for(app) as stub:
        alone = await stub.Generate(request(prompt=PROMPTS[1], max_new_tokens=40))
        sampled_alone = await stub.Generate(request(prompt=PROMPTS[2], max_new_tokens=30, temperature=1.0, seed=11))
        shared_before = metric("ecomserve_batch_size_count") - metric("ecomserve_batch_size_bucket", le="1.0")

        texts: list[str] = []
        call = stub.GenerateStream(request(prompt=PROMPTS[1], max_new_tokens=40))
        joiners: list[asyncio.Future[Any]] = []
        async for message in call:
            texts.append(message.text)
            if len(texts) == 3:  # join mid-way: a long prompt that leaves soon, a short one that stays longer
                joiners.append(asyncio.ensure_future(stub.Generate(request(prompt=LONG_PROMPT, max_new_tokens=4))))
                joiners.append(asyncio.ensure_future(stub.Generate(request(prompt="hello", max_new_tokens=25))))
                joiners.append(
                    asyncio.ensure_future(
                        stub.Generate(request(prompt=PROMPTS[2], max_new_tokens=30, temperature=1.0, seed=11))
                    )
                )
        results = await asyncio.gather(*joiners)
        assert "".join(texts) == alone.text
        assert results[2].text == sampled_alone.text, "a seeded sequence must not depend on its batch mates"
        shared_after = metric("ecomserve_batch_size_count") - metric("ecomserve_batch_size_bucket", le="1.0")
        assert shared_after > shared_before, "the sequences never shared a decode step"


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
async def test_prompts_sharing_a_prefix_reuse_its_kv_and_decode_the_same(generator, architecture: str) -> None:
    """Greedy output is identical with and without the prefix cache, for prompts that share a long prefix, alone
    and prefilled together (rows with and without a cached prefix in one batch)."""
    prompts = [f"{LONG_PROMPT} {question}" for question in PROMPTS]
    hits = ("ecomserve_prefix_cache_tokens_total", {"model": architecture, "outcome": "hit"})

    cached: list[int] = []

    async def texts(stub: generator_pb2_grpc.GeneratorServiceStub) -> list[str]:
        alone = [await stub.Generate(request(architecture, p, max_new_tokens=12)) for p in prompts]
        cached.extend(r.usage.cached_prompt_tokens for r in alone)
        together = await asyncio.gather(
            *(stub.Generate(request(architecture, p, max_new_tokens=12)) for p in [*prompts, "hello there"])
        )
        return [r.text for r in [*alone, *together]]

    async with generator(prefix_cache_mb=0) as app, generator_stub_for(app) as stub:
        before = metric(hits[0], **hits[1])
        without_cache = await texts(stub)
        assert metric(hits[0], **hits[1]) == before
        assert cached == [0, 0, 0]
        cached.clear()
    async with generator() as app, generator_stub_for(app) as stub:
        with_cache = await texts(stub)
        reused = metric(hits[0], **hits[1]) - before
        held = metric("ecomserve_prefix_cache_bytes", model=architecture)
    assert with_cache == without_cache
    assert reused >= 2 * len(LONG_PROMPT.split()), "the shared prefix was not reused"
    assert cached[0] == 0 and cached[1] > 0 and cached[2] > 0, "usage reports the prompt tokens taken from the cache"
    assert held > 0


async def test_a_finished_turns_prompt_and_answer_are_cached_for_the_next_turn(generator) -> None:
    """A conversation's next prompt starts with the last prompt and its answer: the cache holds both once the turn
    finishes, and the next turn decodes as it would without it. (Token ids, not text: the tiny model's answers are
    bytes that do not survive a round trip through text.)"""
    async with generator() as app:
        _, model = app.registry.get("llama")

        def run(executor: StepExecutor, prompt: list[int]) -> Sequence:
            sequence = greedy_sequence(model, prompt, 9)
            executor.run(Prefill([sequence]))
            while sequence.finish is None:
                executor.run(Decode([sequence], stoppable=False))
            return sequence

        whole = model.max_sequence_length  # no prompt is prefilled in chunks
        cached = StepExecutor(model.decoder, model.pad_id, PrefixCache(64 << 20), whole)
        first = run(cached, model.encode(Prompt(text=PROMPTS[0])))
        next_prompt = [*first.prompt_ids, *first.output_ids, *model.encode(Prompt(text=PROMPTS[1]))]
        second = run(cached, next_prompt)
        alone = run(StepExecutor(model.decoder, model.pad_id, PrefixCache(0), whole), next_prompt)
    assert second.cached_prompt_tokens > len(first.computed_ids) - BLOCK_TOKENS
    assert second.cached_prompt_tokens > len(first.prompt_ids), "the answer's KV was not kept"
    assert second.output_ids == alone.output_ids


async def test_a_long_prompt_prefilled_in_chunks_decodes_as_when_prefilled_at_once(generator) -> None:
    """A prompt over the prefill budget runs in chunks, each passing the KV of the ones before as its past; the
    tokens that follow are those of one whole prefill."""
    async with generator() as app:
        _, model = app.registry.get("llama")
        prompt = model.encode(Prompt(text=LONG_PROMPT))

        def run(chunk_tokens: int) -> tuple[list[int], int]:
            """The greedy tokens, and the prefill steps it took."""
            executor = StepExecutor(model.decoder, model.pad_id, PrefixCache(0), chunk_tokens)
            sequence = greedy_sequence(model, prompt, 12)
            prefills = 0
            while not sequence.output_ids:
                executor.run(Prefill([sequence]))
                prefills += 1
            while sequence.finish is None:
                executor.run(Decode([sequence], stoppable=False))
            return sequence.output_ids, prefills

        whole, one = run(len(prompt))
        chunked, chunks = run(7)
    assert one == 1 and chunks == -(-len(prompt) // 7)
    assert chunked == whole


async def test_streams_decode_on_while_a_long_prompt_is_prefilled_in_chunks(generator) -> None:
    """With a small prefill budget the server still answers a long prompt and the streams running beside it as it
    does with one budget for the whole prompt; the long prompt took several prefill steps."""
    short = request(prompt=PROMPTS[1], max_new_tokens=24)
    long = request(prompt=LONG_PROMPT, max_new_tokens=8)

    async def both(stub: generator_pb2_grpc.GeneratorServiceStub) -> list[str]:
        first = asyncio.ensure_future(stub.Generate(short))
        await asyncio.sleep(0.05)  # the short one is decoding when the long one arrives
        return [response.text for response in await asyncio.gather(first, stub.Generate(long))]

    async with generator(prefix_cache_mb=0) as app, generator_stub_for(app) as stub:
        expected = await both(stub)
    async with generator(prefix_cache_mb=0, max_prefill_tokens=6) as app, generator_stub_for(app) as stub:
        before = metric("ecomserve_step_duration_seconds_count", phase="prefill")
        answers = await both(stub)
        prefills = metric("ecomserve_step_duration_seconds_count", phase="prefill") - before
        _, model = app.registry.get("llama")
    assert answers == expected
    assert prefills >= 1 + len(model.encode(Prompt(text=LONG_PROMPT))) // 6


async def test_rows_leaving_and_joining_the_batch_leave_the_others_decoding_as_alone(generator) -> None:
    """One sequence finishes early and another joins later (the batch is rebuilt with one copy of the cache each
    time): every sequence decodes exactly as it does alone."""
    async with generator() as app:
        _, model = app.registry.get("llama")
        prompts = [model.encode(Prompt(text=prompt)) for prompt in PROMPTS]
        lengths = (2, 14, 8)  # the first finishes within two steps, the last joins at the fourth

        def decoded(executor: StepExecutor, first: list[Sequence], joins: dict[int, Sequence]) -> None:
            sequences = list(first)
            executor.run(Prefill(first))
            for step in itertools.count():
                if step in joins:
                    sequences.append(joins[step])
                    executor.run(Prefill([joins[step]]))
                if not (running := [s for s in sequences if s.active]) and step > max(joins, default=0):
                    return
                if running:
                    executor.run(Decode(running, stoppable=False))

        def executor() -> StepExecutor:
            return StepExecutor(model.decoder, model.pad_id, PrefixCache(0), model.max_sequence_length)

        together = [greedy_sequence(model, prompt, n) for prompt, n in zip(prompts, lengths, strict=True)]
        decoded(executor(), together[:2], {3: together[2]})
        for sequence, prompt, n in zip(together, prompts, lengths, strict=True):
            alone = greedy_sequence(model, prompt, n)
            decoded(executor(), [alone], {})
            assert sequence.output_ids == alone.output_ids


async def test_a_stopped_decode_leaves_the_batch_as_it_was(generator) -> None:
    """The scheduler stops a decode in progress for a newcomer's prefill; decoding again must give what the
    stopped step would have given."""
    async with generator() as app:
        _, model = app.registry.get("llama")
        params = SamplingParams(max_new_tokens=4, seed=0)

        def prefilled() -> DecodeBatch:
            sequences = [
                Sequence(
                    model.encode(Prompt(text=p)),
                    params,
                    model.tokenizer,
                    model.eos_ids,
                    model.vocab_size,
                    model.max_sequence_length,
                )
                for p in PROMPTS
            ]
            return DecodeBatch.prefill(model.decoder, sequences, model.pad_id)[0]

        batch = prefilled()
        mask, past, positions = batch.mask.copy(), [t.copy() for t in batch.past], batch.positions.copy()
        stop = RunStop()
        stop.request()
        with pytest.raises(RunStopped):
            batch.decode(model.decoder, stop)
        assert np.array_equal(batch.mask, mask) and np.array_equal(batch.positions, positions)
        assert all(np.array_equal(a, b) for a, b in zip(batch.past, past, strict=True))
        np.testing.assert_array_equal(batch.decode(model.decoder), prefilled().decode(model.decoder))


async def test_stop_sequence_split_across_tokens_is_never_streamed(generator) -> None:
    async with generator() as app, generator_stub_for(app) as stub:
        deltas, _ = await stream_text(stub, request(prompt=PROMPTS[0], max_new_tokens=40))
        full = "".join(deltas)
        # A stop string that starts inside one streamed token and ends inside the next.
        index = next(i for i in range(1, len(deltas) - 1) if len(deltas[i]) >= 2 and len(deltas[i + 1]) >= 2)
        stop = deltas[index][-2:] + deltas[index + 1][:2]
        expected = full[: full.index(stop)]
        stopped, final = await stream_text(stub, request(prompt=PROMPTS[0], max_new_tokens=40, stop=[stop, "zzzz"]))
        assert "".join(stopped) == expected
        assert final.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
        unary = await stub.Generate(request(prompt=PROMPTS[0], max_new_tokens=40, stop=[stop]))
        assert unary.text == expected
        assert unary.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE


async def test_max_new_tokens_bounds_the_completion(generator) -> None:
    async with generator() as app, generator_stub_for(app) as stub:
        for limit in (1, 5, 17):
            response = await stub.Generate(request(prompt=PROMPTS[1], max_new_tokens=limit))
            assert response.usage.completion_tokens <= limit
            if response.finish_reason == pb.FINISH_REASON_LENGTH:
                assert response.usage.completion_tokens == limit
        default = await stub.Generate(request(prompt=PROMPTS[1]))
        assert default.usage.completion_tokens <= app.config.default_max_new_tokens


async def test_same_seed_same_text_different_seeds_differ(generator) -> None:
    async with generator() as app, generator_stub_for(app) as stub:
        params = {"max_new_tokens": 24, "temperature": 1.2, "top_k": 80, "top_p": 0.95}
        first = await stub.Generate(request(prompt=PROMPTS[2], seed=5, **params))
        again = await stub.Generate(request(prompt=PROMPTS[2], seed=5, **params))
        assert first.text == again.text
        others = {(await stub.Generate(request(prompt=PROMPTS[2], seed=s, **params))).text for s in (6, 7, 8)}
        assert others - {first.text}, "different seeds never changed the sampled text"


async def test_chat_messages_use_the_chat_template(generator, causal_lms: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "reply customer"}, {"role": "user", "content": "where is my order"}]
    rendered = AutoTokenizer.from_pretrained(causal_lms["llama"]).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    async with generator() as app, generator_stub_for(app) as stub:
        chat = await stub.Generate(
            pb.GenerateRequest(
                model="llama",
                messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
                sampling=pb.SamplingParameters(max_new_tokens=8),
            )
        )
        raw = await stub.Generate(request(prompt=rendered, max_new_tokens=8))
    # The raw prompt adds no special tokens with this tokenizer, so the two prompts are the same tokens.
    assert chat.text == raw.text
    assert chat.usage.prompt_tokens == raw.usage.prompt_tokens


async def test_cancelling_a_stream_frees_its_slot(generator) -> None:
    async with generator(max_running_sequences=1) as app, generator_stub_for(app) as stub:
        cancelled_before = metric("ecomserve_finished_sequences_total", finish_reason="cancelled")
        # Greedy runs the whole 250 tokens (seed 1 at temperature 1.0 ends of itself after 62): a busy machine may
        # be slow to cancel, and a generation that ended first would leave nothing to cancel.
        call = stub.GenerateStream(request(prompt=PROMPTS[0], max_new_tokens=250, temperature=0.0))
        received = 0
        async for _ in call:
            received += 1
            if received == 2:
                call.cancel()
                break
        # The only slot must come free: a new request completes.
        response = await asyncio.wait_for(stub.Generate(request(prompt=PROMPTS[1], max_new_tokens=3)), 20)
        assert response.usage.completion_tokens >= 1
        cancelled = metric("ecomserve_finished_sequences_total", finish_reason="cancelled")
        assert cancelled == cancelled_before + 1
        _, model = app.registry.get("llama")
        assert model.scheduler.running == 0


async def test_waiting_requests_are_bounded(generator) -> None:
    async with generator(max_running_sequences=1, max_waiting_requests=1) as app, generator_stub_for(app) as stub:
        _, model = app.registry.get("llama")
        # Greedy: it runs the whole 250 tokens (seed 2 at temperature 1.0 ends of itself after 98) and so holds
        # the only slot while the waiting room fills.
        running = stub.GenerateStream(request(prompt=PROMPTS[0], max_new_tokens=250, temperature=0.0))
        await running.read()
        waiting = asyncio.ensure_future(stub.Generate(request(prompt=PROMPTS[1], max_new_tokens=2)))
        for _ in range(200):
            if metric("ecomserve_waiting_sequences") == 1:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(request(prompt=PROMPTS[2], max_new_tokens=2))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_waiting_requests=1" in (refused.value.details() or "")
        running.cancel()
        assert (await asyncio.wait_for(waiting, 20)).usage.completion_tokens >= 1
        assert model.scheduler.running == 0


async def test_requests_arriving_together_are_refused_only_past_running_plus_waiting(generator) -> None:
    """Ten at once against 4 running slots and 4 waiting places: two refused (free slots are no waiting room)."""
    async with generator(max_running_sequences=4, max_waiting_requests=4) as app, generator_stub_for(app) as stub:
        calls = [stub.Generate(request(prompt=PROMPTS[i % len(PROMPTS)], max_new_tokens=40)) for i in range(10)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
        assert all("max_running_sequences=4 + max_waiting_requests=4" in (o.details() or "") for o in refused)
        assert len(refused) <= 2 and len(outcomes) - len(refused) >= 8
        _, model = app.registry.get("llama")
        assert model.scheduler.running == 0


def _messages(*roles: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=role, content="where is my order") for role in roles]


ERROR_ROWS = [
    ({"model": "llama"}, "prompt is empty"),
    ({"model": "llama", "prompt": "hi", "messages": _messages("user")}, "not both"),
    ({"model": "llama", "prompt": "   "}, "prompt is empty"),
    ({"model": "llama", "messages": _messages("user", "robot")}, "messages[1].role"),
    ({"model": "llama", "prompt": "hi", "sampling": {"temperature": -0.5}}, "sampling.temperature"),
    ({"model": "llama", "prompt": "hi", "sampling": {"top_p": 0.0}}, "sampling.top_p must be in (0, 1]"),
    ({"model": "llama", "prompt": "hi", "sampling": {"top_p": 1.5}}, "sampling.top_p must be in (0, 1]"),
    ({"model": "llama", "prompt": "hi", "sampling": {"top_k": -1}}, "sampling.top_k must be >= 0"),
    ({"model": "llama", "prompt": "hi", "sampling": {"repetition_penalty": 0.0}}, "sampling.repetition_penalty"),
    ({"model": "llama", "prompt": "hi", "sampling": {"max_new_tokens": 0}}, "sampling.max_new_tokens must be 1..64"),
    ({"model": "llama", "prompt": "hi", "sampling": {"max_new_tokens": 65}}, "sampling.max_new_tokens must be 1..64"),
    ({"model": "llama", "prompt": LONG_PROMPT * 3}, "max_input_tokens=48"),
    ({"model": "llama", "prompt": "hi", "sampling": {"stop": ["a", "b", "c"]}}, "max_stop_sequences=2"),
    ({"model": "llama", "prompt": "hi", "sampling": {"stop": ["ok", ""]}}, "sampling.stop[1] is empty"),
    ({"prompt": "hi"}, "model is required"),
]


@pytest.mark.parametrize(("fields", "needle"), ERROR_ROWS)
async def test_invalid_requests_name_the_field_and_limit(generator, fields: dict[str, Any], needle: str) -> None:
    fields = dict(fields)
    sampling = pb.SamplingParameters(**fields.pop("sampling", {}))
    limits = {"max_new_tokens": 64, "default_max_new_tokens": 16, "max_input_tokens": 48, "max_stop_sequences": 2}
    async with generator(**limits) as app, generator_stub_for(app) as stub:
        for call in (stub.Generate, lambda r: stub.GenerateStream(r).read()):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(pb.GenerateRequest(sampling=sampling, **fields))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in (error.value.details() or ""), error.value.details()
        assert (await stub.Generate(request(max_new_tokens=2))).usage.completion_tokens >= 1


async def test_unknown_model_is_not_found_and_list_models_describes_them(generator) -> None:
    async with generator() as app, generator_stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Generate(request(model="nope"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "gpt2" in (error.value.details() or "") and "llama" in (error.value.details() or "")
        listed = await stub.ListModels(pb.ListModelsRequest())
        by_name = {m.name: m for m in listed.models}
        assert set(by_name) == {"gpt2", "llama"}
        assert by_name["llama"].has_chat_template and by_name["llama"].max_sequence_length == 512
        assert by_name["llama"].max_input_tokens == 511  # capped by the context, below the 1024 default
