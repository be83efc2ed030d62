"""The export steps every text encoder (classifier, embedder) shares: a fast tokenizer and its feeds, the length
limit, and EncoderGraph, the pipeline's steps for them: trace to ONNX with dynamic batch and sequence axes, check
parity on a padded batch, publish the fp32 or int8 graph, save the tokenizer the services load. A task adds only
its module, its parity rule, its int8 figures and its manifest fields."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoTokenizer

from export import quantize, sources
from export.errors import ExportError
from export.pipeline import OPSET
from export.progress import step
from export.samples import CLASSIFIER_TEXTS, agreement_texts
from services.core.manifest import TOKENIZER_FILE, TensorSpec

FEED_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TRACING_TEXTS = ["a short text", "a somewhat longer text for tracing"]
Compare = Callable[[np.ndarray, np.ndarray], dict[str, Any]]


@dataclass(frozen=True)
class EncoderGraph:
    """The pipeline's steps (export.pipeline.ExportSteps) for a text encoder: the module to trace (feeds in
    FEED_NAMES order, one float output row of `width` per text) and its tokenizer, with the task's rules: `parity`
    turns (ONNX, PyTorch) outputs on the padded parity batch into the manifest's parity entry or raises
    ExportError; `int8_quality` turns (int8, fp32) outputs into figures; `unit` names what `width` counts."""

    module: torch.nn.Module
    tokenizer: Any
    feed_names: list[str]
    max_length: int
    output: str
    width: int
    unit: str
    parity: Compare
    int8_quality: Compare

    def trace(self, path: Path) -> None:
        trace(self.module, self.tokenizer, self.feed_names, self.output, {0: "batch"}, path)

    def check(self, fp32_path: Path) -> dict[str, Any]:
        with step("parity check against PyTorch"):
            feeds = padded_feeds(self.tokenizer, CLASSIFIER_TEXTS, self.feed_names, self.max_length)
            with torch.no_grad():
                expected = self.module(*(torch.from_numpy(feeds[n]) for n in self.feed_names)).numpy()
            return self.parity(_run_onnx(fp32_path, self.output, feeds), expected)

    def publish(self, method: str | None, fp32_path: Path, model_path: Path) -> dict[str, Any]:
        """The fp32 graph, or its int8 quantization with its figures on the agreement texts."""
        if method is None:
            fp32_path.rename(model_path)
            return {"method": "none"}
        if method != "int8":
            raise ExportError(f"--quantize {method}: encoders support int8 only")
        done = quantize.quantize_int8_per_channel(fp32_path, model_path)
        texts = agreement_texts()
        sample = padded_feeds(self.tokenizer, texts, self.feed_names, self.max_length)
        quantized, fp32 = _run_onnx(model_path, self.output, sample), _run_onnx(fp32_path, self.output, sample)
        fp32_path.unlink()
        return {"method": done, **self.int8_quality(quantized, fp32), "texts": len(texts)}

    def save_files(self, folder: Path) -> None:
        backend = self.tokenizer.backend_tokenizer
        # Padding and truncation are the service's decision (bucketed batches); never ship them fixed.
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(folder / TOKENIZER_FILE))

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "max_sequence_length": self.max_length,
            "inputs": [TensorSpec(n, "int64", ["batch", "sequence"]) for n in self.feed_names],
            "outputs": [TensorSpec(self.output, "float32", ["batch", self.width])],
            "special_tokens": {"pad_token_id": self.tokenizer.pad_token_id, "pad_token": self.tokenizer.pad_token},
        }

    def summary(self) -> str:
        return f"{self.width} {self.unit}"


def load_fast_tokenizer(model: str) -> Any:
    tokenizer = sources.load(model, "tokenizer", AutoTokenizer.from_pretrained)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model} has no fast tokenizer (tokenizer.json); the services need one")
    return tokenizer


def feed_names_of(tokenizer: Any) -> list[str]:
    """The graph inputs in FEED_NAMES order: what the tokenizer produces, and always the attention mask."""
    return [n for n in FEED_NAMES if n in tokenizer.model_input_names or n == "attention_mask"]


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


def _run_onnx(path: Path, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], feeds)[0]
