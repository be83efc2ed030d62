"""DecodeBatch: the running sequences and their shared KV cache, in the shape TGI's CausalLMBatch made familiar.

Rows are LEFT-padded to one width: every row's newest token sits in the last column, padding has attention mask 0
and position ids count real tokens only, so sequences of different lengths decode together. `prefill` builds a
batch from new prompts, `decode` runs one step for every row, `filter` drops rows (and the padding columns no
remaining row needs), `concatenate` joins batches by padding the narrower ones on the left.
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
        return cls(sequences, mask, present, mask.sum(axis=1)), logits

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

    def filter(self, keep: list[int]) -> DecodeBatch | None:
        """The rows at `keep` (None when empty), without the leading columns that are padding in all of them."""
        if not keep:
            return None
        if len(keep) == len(self.sequences):
            return self
        rows = np.asarray(keep)
        mask = self.mask[rows]
        start = int(np.argmax(mask.any(axis=0)))
        return DecodeBatch(
            [self.sequences[i] for i in keep],
            np.ascontiguousarray(mask[:, start:]),
            [np.ascontiguousarray(t[rows, :, start:]) for t in self.past],
            self.positions[rows],
        )

    @classmethod
    def concatenate(cls, batches: list[DecodeBatch]) -> DecodeBatch:
        if len(batches) == 1:
            return batches[0]
        width = max(b.width for b in batches)
        masks = [np.pad(b.mask, ((0, 0), (width - b.width, 0))) for b in batches]
        past = []
        for layer in range(len(batches[0].past)):
            parts = []
            for b in batches:
                pad = [(0, 0)] * 4
                pad[SEQUENCE_AXIS] = (width - b.width, 0)
                parts.append(np.pad(b.past[layer], pad) if b.width < width else b.past[layer])
            past.append(np.concatenate(parts, axis=BATCH_AXIS))
        return cls(
            [s for b in batches for s in b.sequences],
            np.concatenate(masks, axis=0),
            past,
            np.concatenate([b.positions for b in batches]),
        )


def _left_padded_past(hits: list[PrefixHit | None], width: int) -> list[np.ndarray]:
    """Per layer, every row's cached prefix KV right-aligned in `width` columns (zeros where it has none)."""
    sample = next(hit for hit in hits if hit is not None).past
    past = []
    for layer, like in enumerate(sample):
        shape = list(like.shape)
        shape[BATCH_AXIS], shape[SEQUENCE_AXIS] = len(hits), width
        tensor = np.zeros(shape, like.dtype)
        for row, hit in enumerate(hits):
            if hit is not None:
                tensor[row, :, width - hit.tokens :] = hit.past[layer][0]
        past.append(tensor)
    return past
