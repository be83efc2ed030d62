"""The heads the classifier service puts on a BatchedEncoder's output rows: class probabilities -> top-k labels
(ClassifierModel), and sentence vectors (EmbedderModel)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.core.encoder import BatchedEncoder


@dataclass(frozen=True)
class Classification:
    """Labels with probabilities, best first, for one text."""

    labels: list[tuple[str, float]]
    token_count: int
    truncated: bool


class ClassifierModel(BatchedEncoder):
    """A classifier version: its graph's output row is a probability per label (manifest order)."""

    @property
    def labels(self) -> list[str]:
        return self.version.manifest.labels

    def describe(self) -> str:
        return f"{len(self.labels)} labels, {super().describe()}"

    async def classify(
        self, texts: Sequence[str], top_k: int, truncate: bool, deadline: float | None
    ) -> list[Classification]:
        """top_k labels per text, best first (0: all)."""
        encoded = await self.encode(texts, truncate, deadline)
        return [self._top(text.output, top_k, text.token_count, text.truncated) for text in encoded]

    def _top(self, probabilities: np.ndarray, top_k: int, length: int, truncated: bool) -> Classification:
        # In Python, not numpy: numpy's sorts release the interpreter lock even for a row of a few hundred labels,
        # and on the event loop each release lets an inference thread take the lock in between. Measured in the
        # server at concurrency 32 (157 labels, top 3): 42-61 us of CPU and 105-175 us on the loop per text with
        # numpy, 25 and 32 us this way.
        labels = self.labels
        row = probabilities.tolist()
        indices = range(len(row))
        if top_k == 0 or top_k >= len(row):
            order = sorted(indices, key=row.__getitem__, reverse=True)
        else:
            order = heapq.nlargest(top_k, indices, key=row.__getitem__)
        return Classification(labels=[(labels[i], row[i]) for i in order], token_count=length, truncated=truncated)


@dataclass(frozen=True)
class Embedding:
    """The vector of one text."""

    vector: np.ndarray
    token_count: int
    truncated: bool


class EmbedderModel(BatchedEncoder):
    """An embedding version: its graph's output row is the text's vector (pooled, and normalised when the
    manifest says so)."""

    @property
    def dimension(self) -> int:
        return int(self.version.manifest.outputs[0].shape[-1])

    @property
    def normalized(self) -> bool:
        return bool(self.version.manifest.embedding.get("normalized"))

    def describe(self) -> str:
        unit = ", unit length" if self.normalized else ""
        return f"{self.dimension} dimensions{unit}, {super().describe()}"

    async def embed(
        self, texts: Sequence[str], truncate: bool, normalize: bool, deadline: float | None
    ) -> list[Embedding]:
        """One vector per text; scaled to unit length when `normalize` asks and the graph has not already."""
        encoded = await self.encode(texts, truncate, deadline)
        scale = normalize and not self.normalized
        return [
            Embedding(_unit(text.output) if scale else text.output, text.token_count, text.truncated)
            for text in encoded
        ]


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
