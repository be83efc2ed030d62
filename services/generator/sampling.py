"""Per-sequence token choice: repetition penalty, temperature, top-k, top-p, seeded randomness.

Each sequence owns its Sampler and its random generator, so a seeded request picks the same tokens whatever else
shares its batch; greedy decoding (temperature 0) is a plain argmax over the (penalised) logits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

# Nucleus search starts with this many candidates and widens until they hold top_p of the mass; a full sort of
# the vocabulary (~50k) per token would cost more than the decode step itself.
NUCLEUS_FIRST_CANDIDATES = 64


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling parameters of one request (see SamplingParameters in generator.proto)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = field(default_factory=lambda: secrets.randbits(63))
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Chooses the next token of one sequence from its logits row. Not thread-safe; one per sequence."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int) -> None:
        self._params = params
        self._rng = np.random.Generator(np.random.PCG64(params.seed))
        self._seen: np.ndarray | None = None
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab_size, dtype=bool)
            self._seen[[i for i in prompt_ids if i < vocab_size]] = True

    def choose(self, logits: np.ndarray) -> int:
        scores = logits.astype(np.float64)
        if self._seen is not None:
            penalty = self._params.repetition_penalty
            seen = scores[self._seen]
            scores[self._seen] = np.where(seen > 0, seen / penalty, seen * penalty)
        token = int(np.argmax(scores)) if self._params.greedy else self._sample(scores)
        if self._seen is not None and token < self._seen.shape[0]:
            self._seen[token] = True
        return token

    def _sample(self, scores: np.ndarray) -> int:
        params = self._params
        scores = scores / params.temperature
        if 0 < params.top_k < scores.shape[0]:
            candidates = np.argpartition(-scores, params.top_k - 1)[: params.top_k]
        else:
            candidates = np.arange(scores.shape[0])
        probs = np.exp(scores[candidates] - scores[candidates].max())
        probs /= probs.sum()
        if params.top_p < 1.0:
            candidates, probs = _nucleus(candidates, probs, params.top_p)
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return int(candidates[min(index, len(candidates) - 1)])


def _nucleus(candidates: np.ndarray, probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The most likely candidates whose probabilities first reach top_p, best first, renormalised."""
    width = NUCLEUS_FIRST_CANDIDATES
    while True:
        if width < len(probs):
            top = np.argpartition(-probs, width - 1)[:width]
        else:
            top = np.arange(len(probs))
        order = top[np.argsort(-probs[top], kind="stable")]
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= top_p or width >= len(probs):
            keep = min(int(np.searchsorted(cumulative, top_p)) + 1, len(order))
            chosen = order[:keep]
            kept = probs[chosen]
            return candidates[chosen], kept / kept.sum()
        width *= 4
