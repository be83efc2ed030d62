"""PrefixCache without a model: longest whole-block prefix, never the whole prompt, token-checked hits, LRU within
the memory budget, and no copy of what it holds already."""

from __future__ import annotations

import numpy as np

from services.generator.prefix_cache import BLOCK_TOKENS, PrefixCache

LAYERS, HEADS, DIM = 2, 2, 4
TOKEN_BYTES = 2 * LAYERS * HEADS * DIM * 4  # key and value, float32


def kv_of(prompt: list[int]) -> list[np.ndarray]:
    """A made-up KV whose every entry is the token id at that position (so slices are easy to check)."""
    values = np.asarray(prompt, np.float32)[None, None, :, None]
    return [np.broadcast_to(values + layer, (1, HEADS, len(prompt), DIM)).copy() for layer in range(2 * LAYERS)]


def store(cache: PrefixCache, prompt: list[int]) -> list[int]:
    """Store `prompt`; the lengths the cache asked the KV of."""
    asked: list[int] = []

    def past_of(tokens: int) -> list[np.ndarray]:
        asked.append(tokens)
        return [layer[:, :, :tokens] for layer in kv_of(prompt)]

    cache.store(prompt, past_of)
    return asked


def test_a_prompt_reuses_the_longest_whole_block_prefix_it_shares() -> None:
    cache = PrefixCache(1 << 20)
    system = list(range(100, 100 + 3 * BLOCK_TOKENS + 2))
    assert cache.lookup([*system, 1, 2, 3]) is None
    assert store(cache, [*system, 7, 8]) == [len(system) + 2 - (len(system) + 2) % BLOCK_TOKENS]
    hit = cache.lookup([*system, 9, 9, 9, 9])
    assert hit is not None
    assert hit.tokens == (len(system) // BLOCK_TOKENS) * BLOCK_TOKENS
    for layer, past in enumerate(hit.past):
        assert past.shape == (1, HEADS, hit.tokens, DIM)
        assert (past[0, 0, :, 0] == np.asarray(system[: hit.tokens]) + layer).all()


def test_the_last_token_of_a_prompt_is_always_left_to_compute() -> None:
    cache = PrefixCache(1 << 20)
    prompt = list(range(2 * BLOCK_TOKENS))
    store(cache, prompt)
    hit = cache.lookup(prompt)
    assert hit is not None and hit.tokens == BLOCK_TOKENS
    assert cache.lookup(prompt[:BLOCK_TOKENS]) is None


def test_a_different_token_anywhere_in_a_block_is_a_miss() -> None:
    cache = PrefixCache(1 << 20)
    prompt = list(range(3 * BLOCK_TOKENS))
    store(cache, prompt)
    changed = list(prompt)
    changed[1] = 999
    assert cache.lookup([*changed, 5]) is None
    changed = list(prompt)
    changed[BLOCK_TOKENS + 1] = 999
    hit = cache.lookup([*changed, 5])
    assert hit is not None and hit.tokens == BLOCK_TOKENS


def test_least_recently_used_entries_leave_within_the_budget() -> None:
    blocks = 2
    entry_bytes = blocks * BLOCK_TOKENS * TOKEN_BYTES
    cache = PrefixCache(2 * entry_bytes)
    first, second, third = ([base + i for i in range(blocks * BLOCK_TOKENS)] for base in (1000, 2000, 3000))
    store(cache, first)
    store(cache, second)
    assert cache.bytes_held == 2 * entry_bytes
    assert cache.lookup([*first, 1]) is not None  # first is now the most recently used
    store(cache, third)
    assert cache.bytes_held == 2 * entry_bytes
    assert cache.lookup([*second, 1]) is None
    assert cache.lookup([*first, 1]) is not None and cache.lookup([*third, 1]) is not None


def test_what_is_held_already_is_not_copied_again_and_too_big_is_not_kept() -> None:
    cache = PrefixCache(2 * BLOCK_TOKENS * TOKEN_BYTES)
    prompt = list(range(2 * BLOCK_TOKENS))
    assert store(cache, prompt) == [2 * BLOCK_TOKENS]
    assert store(cache, [*prompt, 5]) == []
    assert store(cache, prompt[:BLOCK_TOKENS]) == []
    assert store(cache, list(range(500, 500 + 3 * BLOCK_TOKENS))) == [3 * BLOCK_TOKENS]
    assert cache.lookup([*prompt, 5]) is not None  # the over-budget prompt evicted nothing


def test_a_zero_budget_disables_it() -> None:
    cache = PrefixCache(0)
    prompt = list(range(3 * BLOCK_TOKENS))
    assert store(cache, prompt) == []
    assert cache.lookup([*prompt, 1]) is None and cache.bytes_held == 0


def test_an_entry_that_a_longer_one_holds_whole_is_dropped_and_its_prefixes_still_hit() -> None:
    cache = PrefixCache(1 << 20)
    turn = list(range(2 * BLOCK_TOKENS))
    other = list(range(900, 900 + BLOCK_TOKENS))
    store(cache, turn)
    store(cache, other)
    store(cache, [*turn, *range(50, 50 + 2 * BLOCK_TOKENS)])  # the turn's prompt and its answer
    assert cache.bytes_held == (4 + 1) * BLOCK_TOKENS * TOKEN_BYTES
    hit = cache.lookup([*turn, 1])
    assert hit is not None and hit.tokens == 2 * BLOCK_TOKENS
    assert cache.lookup([*other, 1]) is not None
