"""Plain onnxruntime on an exported encoder version (its model.onnx and tokenizer.json, nothing of the services):
the reference that served and exported answers are compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def run_padded(folder: Path, texts: list[str]) -> np.ndarray:
    """The graph's first output for the texts as one batch, padded to the longest."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def run_alone(folder: Path, text: str) -> np.ndarray:
    """The graph's output row for one text alone: no padding, no batch-mates."""
    return run_padded(folder, [text])[0]
