"""The checks every request that carries texts for an encoder model shares; the classifier service and the
gateway apply the same ones, with the same messages."""

from __future__ import annotations

from collections.abc import Sequence

from services.core.errors import InvalidArgument


def check_texts(model: str, texts: Sequence[str], max_texts: int, max_chars: int | None = None) -> None:
    """A model name, 1..max_texts texts, none blank (nor over max_chars characters, when given)."""
    if not model:
        raise InvalidArgument("model is required; ListModels (or GET /v1/models) shows what is served")
    if not texts:
        raise InvalidArgument("texts is empty; send between 1 and max_texts_per_request texts")
    if len(texts) > max_texts:
        raise InvalidArgument(f"texts has {len(texts)} entries; at most max_texts_per_request={max_texts} per request")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{index}] is empty; every text needs at least one non-space character")
        if max_chars is not None and len(text) > max_chars:
            raise InvalidArgument(f"texts[{index}] has {len(text)} characters, over the limit of {max_chars}")
