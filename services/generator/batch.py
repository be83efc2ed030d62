"""DecodeBatch: the running sequences and their shared KV cache, in the shape TGI's CausalLMBatch made familiar.

Rows are LEFT-padded to one width: every row's newest token sits in the last column, padding has attention mask 0
and position ids count real tokens only, so sequences of different lengths decode together. `prefill` builds a
batch from new prompts, `decode` runs one step for every row, `assemble` builds one batch from rows of several
(dropping ended rows, joining prefilled ones) with a single copy of their KV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.core.runner import RunStop
from services.generator.decoder import DecoderRunner
from services.generator.prefix_cache import PrefixHit
from services.generator.sequence import Sequence

# KV cache axes: [batch, kv_heads, sequence, head_dim].
BATCH_AXIS, SEQUENCE_AXIS = 0, 2


@dataclass
class DecodeBatch:
    sequences: list[Sequence]
    mask: np.ndarray  # [batch, width] int64: 1 where a row has a real token
    past: list[np.ndarray]  # per layer key and value: [batch, kv_heads, width, head_dim]
    positions: np.ndarray  # [batch] int64: position id of each row's next token

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(
        cls,
        decoder: DecoderRunner,
        sequences: list[Sequence],
        pad_id: int,
        hits: list[PrefixHit | None] | None = None,
        ends: list[int] | None = None,
    ) -> tuple[DecodeBatch, np.ndarray]:
        """Run the prompts, left-padded together; the new batch and each row's next-token logits. A prompt with a
        computed prefix (`hits`, per row: cached, or its earlier chunks) passes that prefix's KV as its past and
        runs only the rest, up to its `ends` (per row; default the whole prompt): the past is left-padded to the
        longest prefix, so a row's mask may have a gap between its prefix and the rest."""
        cached = [hit.tokens if hit else 0 for hit in hits or [None] * len(sequences)]
        stops = ends or [len(s.prompt_ids) for s in sequences]
        rows, past_width = len(sequences), max(cached)
        width = max(end - start for start, end in zip(cached, stops, strict=True))
        ids = np.full((rows, width), pad_id, np.int64)
        mask = np.zeros((rows, past_width + width), np.int64)
        for row, (sequence, prefix, end) in enumerate(zip(sequences, cached, stops, strict=True)):
            rest = sequence.prompt_ids[prefix:end]
            ids[row, width - len(rest) :] = rest
            mask[row, past_width - prefix : past_width] = 1
            mask[row, past_width + width - len(rest) :] = 1
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)[:, past_width:]
        past = decoder.empty_past(rows) if not past_width else _left_padded_past(hits or [], past_width)
        logits, present = decoder.forward(ids, mask, positions, past)
        return cls(list(sequences), mask, present, mask.sum(axis=1)), logits

    def row_past(self, row: int, tokens: int) -> list[np.ndarray]:
        """The KV of row `row`'s first `tokens` real tokens, per layer [1, kv_heads, tokens, head_dim] (a copy)."""
        columns = np.flatnonzero(self.mask[row])[:tokens]
        return [layer[row : row + 1][:, :, columns] for layer in self.past]

    def decode(self, decoder: DecoderRunner, stop: RunStop | None = None) -> np.ndarray:
        """Feed every row's last token; the cache grows by one column. Returns next-token logits per row. A
        stopped run (RunStopped) leaves the batch as it was."""
        tokens = np.array([[s.last_token] for s in self.sequences], np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.sequences), 1), np.int64)], axis=1)
        logits, present = decoder.forward(tokens, mask, self.positions[:, None], self.past, stop)
        self.mask, self.past, self.positions = mask, present, self.positions + 1
        return logits

    @classmethod
    def assemble(cls, parts: list[tuple[DecodeBatch, list[int]]]) -> DecodeBatch | None:
        """One batch of the rows picked from each part (None when none is), left-padded to the widest, without the
        leading columns that are padding in every picked row of a part. Each picked row's KV is copied once; a
        single part picked whole is returned as it is."""
        picked = [(batch, rows) for batch, rows in parts if rows]
        if not picked:
            return None
        if len(picked) == 1 and len(picked[0][1]) == len(picked[0][0].sequences):
            return picked[0][0]
        starts = [int(np.argmax(batch.mask[rows].any(axis=0))) for batch, rows in picked]
        width = max(batch.width - start for (batch, _), start in zip(picked, starts, strict=True))
        total = sum(len(rows) for _, rows in picked)
        mask = np.zeros((total, width), np.int64)
        past = [np.empty(_resized(layer, total, width), layer.dtype) for layer in picked[0][0].past]
        sequences: list[Sequence] = []
        positions: list[np.ndarray] = []
        out = 0
        for (batch, rows), start in zip(picked, starts, strict=True):
            pad = width - (batch.width - start)
            mask[out : out + len(rows), pad:] = batch.mask[rows, start:]
            for target, source in zip(past, batch.past, strict=True):
                target[out : out + len(rows), :, :pad] = 0  # masked, but must be finite: 0 x NaN is NaN
                for offset, row in enumerate(rows):  # row by row: no temporary copy of the whole part
                    target[out + offset, :, pad:] = source[row, :, start:]
            sequences.extend(batch.sequences[row] for row in rows)
            positions.append(batch.positions[rows])
            out += len(rows)
        return cls(sequences, mask, past, np.concatenate(positions))


def _resized(layer: np.ndarray, rows: int, width: int) -> list[int]:
    """The shape of a KV tensor like `layer` with `rows` rows of `width` columns."""
    shape = list(layer.shape)
    shape[BATCH_AXIS], shape[SEQUENCE_AXIS] = rows, width
    return shape


def _left_padded_past(hits: list[PrefixHit | None], width: int) -> list[np.ndarray]:
    """Per layer, every row's cached prefix KV right-aligned in `width` columns (zeros where it has none)."""
    sample = next(hit for hit in hits if hit is not None).past
    past = []
    for layer, like in enumerate(sample):
        tensor = np.zeros(_resized(like, len(hits), width), like.dtype)
        for row, hit in enumerate(hits):
            if hit is not None:
                tensor[row, :, width - hit.tokens :] = hit.past[layer][0]
        past.append(tensor)
    return past
