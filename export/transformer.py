"""The steps every text-encoder export (classifier, embedder) shares: a fast tokenizer and its feeds, the length
limit, tracing to ONNX with dynamic batch and sequence axes, padded sample batches, and the tokenizer file the
services load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoTokenizer

from export import quantize, sources
from export.errors import ExportError
from export.progress import step
from export.samples import CLASSIFIER_TEXTS, agreement_texts
from services.core.manifest import TOKENIZER_FILE, TensorSpec

OPSET = 17
FEED_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TRACING_TEXTS = ["a short text", "a somewhat longer text for tracing"]


def load_fast_tokenizer(model: str) -> Any:
    tokenizer = sources.load(model, "tokenizer", AutoTokenizer.from_pretrained)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model} has no fast tokenizer (tokenizer.json); the services need one")
    return tokenizer


def feed_names_of(tokenizer: Any) -> list[str]:
    """The graph inputs in FEED_NAMES order: what the tokenizer produces, and always the attention mask."""
    return [n for n in FEED_NAMES if n in tokenizer.model_input_names or n == "attention_mask"]


def input_specs(feed_names: list[str]) -> list[TensorSpec]:
    return [TensorSpec(n, "int64", ["batch", "sequence"]) for n in feed_names]


def max_length_of(config: Any, folder: Path | None, tokenizer: Any) -> int:
    """The longest input the model takes: its position embeddings, its tokenizer's limit and, for
    sentence-transformers bodies, the length they were trained at."""
    limits = [int(getattr(config, "max_position_embeddings", 512))]
    if 0 < (tokenizer.model_max_length or 0) < 100_000:
        limits.append(int(tokenizer.model_max_length))
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        limits.append(int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]))
    return min(limits)


def trace(
    module: torch.nn.Module, tokenizer: Any, feed_names: list[str], output: str, output_axes: dict[int, str], path: Path
) -> None:
    """torch.onnx.export of `module(*feeds)` with dynamic batch and sequence axes and one named output."""
    with step("exporting to ONNX"):
        dummy = tokenizer(TRACING_TEXTS, padding=True, return_tensors="pt")
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in feed_names}
        axes[output] = output_axes
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(dummy[n] if n in dummy else torch.zeros_like(dummy["input_ids"]) for n in feed_names),
                str(path),
                input_names=feed_names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )


def padded_feeds(tokenizer: Any, texts: list[str], feed_names: list[str], max_length: int) -> dict[str, np.ndarray]:
    """The texts as one padded batch: what parity checks run, so padding is part of what they check."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {
        n: np.asarray(encoded[n], dtype=np.int64)
        if n in encoded
        else np.zeros_like(encoded["input_ids"], dtype=np.int64)
        for n in feed_names
    }


def parity_outputs(
    module: torch.nn.Module, onnx_path: Path, output: str, tokenizer: Any, feed_names: list[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX output, PyTorch output) of the parity texts as one padded batch."""
    with step("parity check against PyTorch"):
        feeds = padded_feeds(tokenizer, CLASSIFIER_TEXTS, feed_names, max_length)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(feeds[n]) for n in feed_names)).numpy()
        return _run_onnx(onnx_path, output, feeds), expected


def publish_graph(
    method: str | None,
    fp32_path: Path,
    model_path: Path,
    output: str,
    tokenizer: Any,
    feed_names: list[str],
    max_length: int,
    compare: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
) -> dict[str, Any]:
    """Write the served graph to model_path: the fp32 one, or its int8 quantization, whose outputs on the
    agreement texts `compare` (quantized, fp32) describes. Returns the manifest's quantization entry."""
    if method is None:
        fp32_path.rename(model_path)
        return {"method": "none"}
    if method != "int8":
        raise ExportError(f"--quantize {method}: encoders support int8 only")
    done = quantize.quantize_int8_per_channel(fp32_path, model_path)
    texts = agreement_texts()
    sample = padded_feeds(tokenizer, texts, feed_names, max_length)
    quality = compare(_run_onnx(model_path, output, sample), _run_onnx(fp32_path, output, sample))
    fp32_path.unlink()
    return {"method": done, **quality, "texts": len(texts)}


def _run_onnx(path: Path, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], feeds)[0]


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    backend = tokenizer.backend_tokenizer
    # Padding and truncation are the service's decision (bucketed batches); never ship them fixed.
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(folder / TOKENIZER_FILE))


def special_tokens_of(tokenizer: Any) -> dict[str, Any]:
    return {"pad_token_id": tokenizer.pad_token_id, "pad_token": tokenizer.pad_token}
