"""StepExecutor: runs the step the policy chose, on the scheduler's worker thread. It owns the running batch and its
KV cache; it records nothing and decides nothing.

A prefill batch joins the running batch at the next decode, which first keeps only the rows of the sequences it
was given (the others ended: their cache rows are freed) and then runs one token for every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from services.core.runner import RunStop
from services.generator.batch import DecodeBatch
from services.generator.decoder import DecoderRunner
from services.generator.policy import Decode, Prefill, Step
from services.generator.prefix_cache import PrefixCache
from services.generator.sequence import Sequence, TextDelta


@dataclass
class StepResult:
    """What one step did: the deltas to publish and what the metrics observer records."""

    phase: str  # "prefill" or "decode"
    deltas: list[tuple[Sequence, TextDelta]] = field(default_factory=list)
    duration_s: float = 0.0
    rows: int = 0  # sequences in the forward pass
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those whose KV came from the prefix cache


class StepExecutor:
    def __init__(self, decoder: DecoderRunner, pad_id: int, prefix_cache: PrefixCache) -> None:
        self._decoder = decoder
        self._pad_id = pad_id
        self._prefix_cache = prefix_cache
        self._batch: DecodeBatch | None = None
        self._joining: list[DecodeBatch] = []  # prefilled since the last decode, which merges them

    def run(self, step: Step, stop: RunStop | None = None) -> StepResult:
        """The step's forward pass, sampling and detokenizing; RunStopped when `stop` was requested during a
        decode (the batch is left as it was), ModelFailure when onnxruntime fails."""
        if isinstance(step, Prefill):
            return self._prefill(step.sequences)
        return self._decode(step, stop)

    def reset(self) -> None:
        """Drop the batch and its cache (nothing runs any more, or the step failed)."""
        self._batch, self._joining = None, []

    def _prefill(self, sequences: list[Sequence]) -> StepResult:
        started = time.perf_counter()
        hits = [self._prefix_cache.lookup(s.prompt_ids) for s in sequences]
        for sequence, hit in zip(sequences, hits, strict=True):
            sequence.cached_prompt_tokens = hit.tokens if hit else 0
        joining, logits = DecodeBatch.prefill(self._decoder, sequences, self._pad_id, hits)
        for row, sequence in enumerate(sequences):
            self._prefix_cache.store(sequence.prompt_ids, partial(joining.row_past, row))
        self._joining.append(joining)
        duration = time.perf_counter() - started
        result = StepResult("prefill", _advance(sequences, logits), duration, len(sequences))
        result.prompt_tokens = sum(len(s.prompt_ids) for s in sequences)
        result.cached_prompt_tokens = sum(s.cached_prompt_tokens for s in sequences)
        return result

    def _decode(self, step: Decode, stop: RunStop | None) -> StepResult:
        keep = {s.id for s in step.sequences}
        parts = [b for b in (self._batch, *self._joining) if b is not None]
        kept = [k for b in parts if (k := b.filter([i for i, s in enumerate(b.sequences) if s.id in keep])) is not None]
        self._joining = []
        batch = self._batch = DecodeBatch.concatenate(kept) if kept else None
        if batch is None:
            return StepResult("decode")
        started = time.perf_counter()
        logits = batch.decode(self._decoder, stop)
        duration = time.perf_counter() - started
        deltas = _advance(batch.sequences, logits)
        # A finished conversation turn's KV (its prompt and its answer) is the start of the next turn's prompt.
        for row, sequence in enumerate(batch.sequences):
            if sequence.finish is not None:
                self._prefix_cache.store(sequence.computed_ids, partial(batch.row_past, row))
        return StepResult("decode", deltas, duration, len(batch.sequences))


def _advance(sequences: list[Sequence], logits: np.ndarray) -> list[tuple[Sequence, TextDelta]]:
    return [(s, delta) for row, s in enumerate(sequences) if (delta := s.advance(logits[row])) is not None]
