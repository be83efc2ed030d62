"""StepExecutor: runs the step the policy chose, on the scheduler's worker thread. It owns the running batch and its
KV cache; it records nothing and decides nothing.

A prefill batch joins the running batch at the next decode, which first keeps only the rows of the sequences it
was given (the others ended: their cache rows are freed), together with the joining rows in one copy of the cache,
and then runs one token for every row. A prefill computes at most `chunk_tokens` of a prompt beyond its cached
prefix; a longer prompt keeps the KV of its chunks here until its last chunk runs (the policy schedules decodes
between them) and only then joins.
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
from services.generator.prefix_cache import PrefixCache, PrefixHit
from services.generator.sequence import Sequence, TextDelta


@dataclass
class StepResult:
    """What one step did: the deltas to publish and what the metrics observer records."""

    phase: str  # "prefill" or "decode"
    deltas: list[tuple[Sequence, TextDelta]] = field(default_factory=list)
    duration_s: float = 0.0
    rows: int = 0  # sequences in the forward pass
    sampled: int = 0  # of them, those that got a token (a prompt's chunk before its last gets none)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those whose KV came from the prefix cache


class StepExecutor:
    def __init__(self, decoder: DecoderRunner, pad_id: int, prefix_cache: PrefixCache, chunk_tokens: int) -> None:
        self._decoder = decoder
        self._pad_id = pad_id
        self._prefix_cache = prefix_cache
        self._chunk_tokens = chunk_tokens
        self._batch: DecodeBatch | None = None
        self._joining: list[DecodeBatch] = []  # prefilled since the last decode, which merges them
        self._chunked: dict[int, tuple[Sequence, PrefixHit]] = {}  # by id: a prompt part-way through its chunks

    def run(self, step: Step, stop: RunStop | None = None) -> StepResult:
        """The step's forward pass, sampling and detokenizing; RunStopped when `stop` was requested during a
        decode (the batch is left as it was), ModelFailure when onnxruntime fails."""
        # A prompt cancelled between its chunks leaves its chunks' KV here: freed at the next step.
        self._chunked = {key: chunked for key, chunked in self._chunked.items() if chunked[0].active}
        if isinstance(step, Prefill):
            return self._prefill(step.sequences)
        return self._decode(step, stop)

    def reset(self) -> None:
        """Drop the batch and its cache (nothing runs any more, or the step failed)."""
        self._batch, self._joining, self._chunked = None, [], {}

    def _prefill(self, sequences: list[Sequence]) -> StepResult:
        started = time.perf_counter()
        hits, ends = [], []
        for sequence in sequences:
            if (chunked := self._chunked.pop(sequence.id, None)) is not None:
                hit: PrefixHit | None = chunked[1]
            else:
                hit = self._prefix_cache.lookup(sequence.prompt_ids)
                sequence.cached_prompt_tokens = hit.tokens if hit else 0
            hits.append(hit)
            ends.append(min(len(sequence.prompt_ids), (hit.tokens if hit else 0) + self._chunk_tokens))
        batch, logits = DecodeBatch.prefill(self._decoder, sequences, self._pad_id, hits, ends)
        whole = [row for row, (s, end) in enumerate(zip(sequences, ends, strict=True)) if end == len(s.prompt_ids)]
        for row, (sequence, end) in enumerate(zip(sequences, ends, strict=True)):
            if end < len(sequence.prompt_ids):  # the rest of its prompt runs in later steps, decodes between them
                self._chunked[sequence.id] = (sequence, PrefixHit(end, batch.row_past(row, end)))
        if (joining := DecodeBatch.assemble([(batch, whole)])) is not None:
            for row, sequence in enumerate(joining.sequences):
                self._prefix_cache.store(sequence.prompt_ids, partial(joining.row_past, row))
            self._joining.append(joining)
        prefilled = [sequences[row] for row in whole]
        duration = time.perf_counter() - started
        result = StepResult("prefill", _advance(prefilled, logits[whole]), duration, len(sequences), len(prefilled))
        result.prompt_tokens = sum(len(s.prompt_ids) for s in prefilled)
        result.cached_prompt_tokens = sum(s.cached_prompt_tokens for s in prefilled)
        return result

    def _decode(self, step: Decode, stop: RunStop | None) -> StepResult:
        live = {s.id for s in step.sequences}
        parts = [b for b in (self._batch, *self._joining) if b is not None]
        self._joining = []
        picked = [(b, [row for row, s in enumerate(b.sequences) if s.id in live]) for b in parts]
        batch = self._batch = DecodeBatch.assemble(picked)
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
        return StepResult("decode", deltas, duration, len(batch.sequences), len(batch.sequences))


def _advance(sequences: list[Sequence], logits: np.ndarray) -> list[tuple[Sequence, TextDelta]]:
    return [(s, delta) for row, s in enumerate(sequences) if (delta := s.advance(logits[row])) is not None]
