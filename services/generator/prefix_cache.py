"""PrefixCache: the KV of prompt prefixes that recent prompts computed, so that a prompt starting with the same
tokens (a chat template's system prompt, a gateway template's instructions, a conversation's history) prefills
only the rest.

Prefixes are kept in whole blocks of BLOCK_TOKENS tokens and found by a chain of block hashes (block k's key hashes
block k's tokens with block k-1's key), as vLLM's automatic prefix caching finds its blocks; a hit is confirmed
token by token, so a hash collision can never lend a prompt another's KV. Entries hold one contiguous copy per
layer and leave least recently used first when the memory budget is reached. Used by the scheduler's worker
thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK_TOKENS = 4


@dataclass
class PrefixHit:
    """A prompt's first `tokens` tokens, and their KV per layer (views [1, kv_heads, tokens, head_dim])."""

    tokens: int
    past: list[np.ndarray]


@dataclass
class _Entry:
    tokens: tuple[int, ...]  # a whole number of blocks
    past: list[np.ndarray]  # per layer key and value: [1, kv_heads, len(tokens), head_dim]
    keys: list[int]  # the block-chain keys of its prefixes
    nbytes: int


class PrefixCache:
    """KV of prompt prefixes within `budget_bytes` (0 disables it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes_held = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by id(entry), least recently used first
        self._by_key: dict[int, _Entry] = {}

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The longest cached prefix of `prompt` that leaves at least its last token to compute."""
        if not self.budget_bytes:
            return None
        keys = _block_keys(prompt, (len(prompt) - 1) // BLOCK_TOKENS)
        for blocks in range(len(keys), 0, -1):
            entry = self._by_key.get(keys[blocks - 1])
            length = blocks * BLOCK_TOKENS
            if entry is not None and entry.tokens[:length] == tuple(prompt[:length]):
                self._entries.move_to_end(id(entry))
                return PrefixHit(length, [layer[:, :, :length] for layer in entry.past])
        return None

    def store(self, prompt: list[int], past_of: Callable[[int], list[np.ndarray]]) -> None:
        """Keep the KV of `prompt`'s whole blocks, unless a cached entry holds them already or they exceed the whole
        budget. `past_of(n)` gives the KV of its first n tokens (per layer [1, kv_heads, n, head_dim]), asked for
        only when it is kept."""
        blocks = len(prompt) // BLOCK_TOKENS
        length = blocks * BLOCK_TOKENS
        if not self.budget_bytes or not blocks:
            return
        keys = _block_keys(prompt, blocks)
        held = self._by_key.get(keys[-1])
        if held is not None and held.tokens[:length] == tuple(prompt[:length]):
            self._entries.move_to_end(id(held))
            return
        past = [np.ascontiguousarray(layer) for layer in past_of(length)]
        nbytes = sum(layer.nbytes for layer in past)
        if nbytes > self.budget_bytes:
            return
        tokens = tuple(prompt[:length])
        # An entry that is a prefix of this one (a turn's prompt, when its answer comes to be kept) would lose every
        # key to it and only hold memory until it is the oldest: it goes now.
        for key in keys[:-1]:
            shorter = self._by_key.get(key)
            if shorter is not None and shorter.keys[-1] == key and tokens[: len(shorter.tokens)] == shorter.tokens:
                self._remove(shorter)
        while self.bytes_held + nbytes > self.budget_bytes:
            self._remove(next(iter(self._entries.values())))  # the least recently used
        entry = _Entry(tokens, past, keys, nbytes)
        self._entries[id(entry)] = entry
        for key in keys:
            self._by_key[key] = entry
        self.bytes_held += nbytes

    def _remove(self, entry: _Entry) -> None:
        del self._entries[id(entry)]
        for key in entry.keys:
            if self._by_key.get(key) is entry:
                del self._by_key[key]
        self.bytes_held -= entry.nbytes


def _block_keys(prompt: list[int], blocks: int) -> list[int]:
    """Key k names the first k + 1 blocks of `prompt`."""
    keys, key = [], 0
    for block in range(blocks):
        key = hash((key, tuple(prompt[block * BLOCK_TOKENS : (block + 1) * BLOCK_TOKENS])))
        keys.append(key)
    return keys
