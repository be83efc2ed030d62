"""Generator text handling without a server: incremental detokenization, stop sequences, sampling, chat template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from services.generator.chat import ChatTemplate
from services.generator.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from services.generator.sampling import Sampler, SamplingParams, _nucleus
from tests import fixtures


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("bpe")
    fixtures.write_bpe_tokenizer(folder)
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def stream(
    tokenizer: Tokenizer, ids: list[int], stop: tuple[str, ...] = ()
) -> tuple[list[str], IncrementalDetokenizer]:
    text = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in ids:
        text.add(token)
        deltas.append(text.take())
        if text.stopped:
            break
    deltas.append(text.take(final=True))
    return deltas, text


def test_deltas_never_split_a_multi_byte_character(byte_level: Tokenizer) -> None:
    sentence = "héllo 👍 where is my order? ünïcødé ✓"
    ids = byte_level.encode(sentence).ids
    assert len(ids) > len(sentence.split())  # the emoji and accents take several byte tokens
    deltas, _ = stream(byte_level, ids)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert "".join(deltas) == byte_level.decode(ids) == sentence


def test_stop_sequence_is_cut_and_its_start_never_released(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("where is my order please reply").ids
    deltas, text = stream(byte_level, ids, stop=("my order", "zzz"))
    assert text.stopped
    assert "".join(deltas) == "where is "
    assert not any("my" in d for d in deltas)


def test_held_back_text_is_released_when_the_stop_does_not_follow(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("where is my parcel").ids
    deltas, text = stream(byte_level, ids, stop=("my order",))
    assert not text.stopped
    assert "".join(deltas) == "where is my parcel"


def test_nucleus_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    # From flat (the first threshold holds too little mass and the search widens) to peaked distributions.
    for spread in (0.05, 1.0, 3.0, 10.0):
        for top_p in (0.5, 0.9, 0.99):  # top_p 1.0 samples from all tokens, without a nucleus
            weights = np.exp(rng.normal(size=5000) * spread).astype(np.float32)
            mass = top_p * float(weights.sum(dtype=np.float64))
            order = np.argsort(-weights, kind="stable")
            keep = min(int(np.searchsorted(np.cumsum(weights[order], dtype=np.float64), mass)) + 1, len(order))
            chosen, kept = _nucleus(weights, mass)
            assert set(chosen.tolist()) == set(order[:keep].tolist())
            assert np.array_equal(kept, weights[chosen])
            assert list(kept) == sorted(kept, reverse=True)


def test_top_p_draws_only_from_the_nucleus() -> None:
    logits = np.random.default_rng(2).normal(size=1000).astype(np.float32) * 4
    params = SamplingParams(max_new_tokens=200, temperature=0.7, top_p=0.5, seed=5)
    sampler = Sampler(params, [0], 1000)
    probs = np.exp((logits - logits.max()) / 0.7)
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1].tolist())
    draws = [sampler.choose(logits) for _ in range(200)]
    assert set(draws) <= nucleus
    assert len(set(draws)) > 1


def test_greedy_argmax_with_repetition_penalty() -> None:
    logits = np.array([0.0, 5.0, 4.5, -1.0], np.float32)
    assert Sampler(SamplingParams(max_new_tokens=1), [0], 4).choose(logits) == 1
    penalised = Sampler(SamplingParams(max_new_tokens=1, repetition_penalty=1.5), [1], 4)
    assert penalised.choose(logits) == 2  # 5.0 / 1.5 < 4.5


def test_seeded_sampling_repeats_and_respects_top_k() -> None:
    logits = np.random.default_rng(1).normal(size=300).astype(np.float32)
    params = SamplingParams(max_new_tokens=50, temperature=1.0, top_k=5, seed=3)
    sampler_a, sampler_b = Sampler(params, [0], 300), Sampler(params, [0], 300)
    draws_a = [sampler_a.choose(logits) for _ in range(50)]
    assert draws_a == [sampler_b.choose(logits) for _ in range(50)]
    assert set(draws_a) <= set(np.argsort(-logits)[:5].tolist())


def test_chat_template_renders_like_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    fixtures.write_bpe_tokenizer(tmp_path)
    messages = [("system", "be brief"), ("user", "where is my order"), ("assistant", "on its way"), ("user", "ok")]
    expected = AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
    )
    template = ChatTemplate(fixtures.CHAT_TEMPLATE, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    assert template.render(messages) == expected
