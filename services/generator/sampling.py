"""Per-sequence token choice: repetition penalty, temperature, top-k, top-p, seeded randomness.

Each sequence owns its Sampler and its random generator, so a seeded request picks the same tokens whatever else
shares its batch; greedy decoding (temperature 0) is a plain argmax over the (penalised) logits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

# Nucleus search first looks at the tokens at least this fraction as likely as the best one and widens (by the same
# factor) until they hold top_p of the mass; a full sort, or a partition, of the vocabulary (~50k) per token would
# cost a good part of a whole batch's decode step.
NUCLEUS_FIRST_RATIO = 1e-3


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
        scores = np.array(logits, dtype=np.float32)  # a copy: the penalty and the softmax work in place
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
        candidates = None
        if 0 < params.top_k < scores.shape[0]:
            candidates = np.argpartition(-scores, params.top_k - 1)[: params.top_k]
            scores = scores[candidates]
        # Unnormalised softmax at the temperature, in float32 over the vocabulary (float64 costs twice as much).
        scores -= scores.max()
        scores /= params.temperature
        weights = np.exp(scores, out=scores)
        if params.top_p < 1.0:
            nucleus, weights = _nucleus(weights, params.top_p * float(weights.sum(dtype=np.float64)))
            candidates = nucleus if candidates is None else candidates[nucleus]
        cumulative = np.cumsum(weights, dtype=np.float64)
        draw = self._rng.random() * cumulative[-1]
        index = min(int(np.searchsorted(cumulative, draw, side="right")), len(weights) - 1)
        return index if candidates is None else int(candidates[index])


def _nucleus(weights: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the heaviest weights whose sum first reaches `mass`, heaviest first, and those weights.
    Exact: the weights at or above any threshold are a prefix of the sorted order, so once such a prefix holds
    `mass` the nucleus lies inside it."""
    threshold = float(weights.max()) * NUCLEUS_FIRST_RATIO
    while True:
        top = np.flatnonzero(weights >= threshold)
        if threshold == 0.0 or weights[top].sum(dtype=np.float64) >= mass:
            break
        threshold = threshold * NUCLEUS_FIRST_RATIO if threshold > np.finfo(np.float32).tiny else 0.0
    order = top[np.argsort(-weights[top], kind="stable")]
    keep = min(int(np.searchsorted(np.cumsum(weights[order], dtype=np.float64), mass)) + 1, len(order))
    return order[:keep], weights[order[:keep]]
