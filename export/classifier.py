"""Export text classifiers: Hugging Face sequence classifiers, or an embedding body + a scikit-learn linear head.

Either way the ONNX graph takes token ids and attention mask (and token type ids where the model uses them)
with dynamic batch and sequence axes, and returns per-label probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from export import pipeline, sources, transformer
from export.errors import ExportError
from export.package import choose_version, earlier_export
from export.progress import say, step
from services.core.manifest import TASK_CLASSIFICATION, Manifest

FP32_TOLERANCE = 1e-4
OUTPUT = "probabilities"


@dataclass(frozen=True)
class ClassifierExport:
    """What to export and where; built from the CLI or by `export defaults`."""

    model: str
    name: str
    out: Path
    version: int | None = None
    quantize: str | None = None  # None or "int8"
    head: Path | None = None
    label_map: Path | None = None
    max_length: int | None = None
    force: bool = False


def export_classifier(job: ClassifierExport) -> tuple[Manifest, Path]:
    """Export, check parity, optionally quantize, and write job.out/name/version; returns manifest and folder."""
    folder = sources.check_source(job.model)
    head = _load_head(job.head, job.label_map) if job.head else None
    digest = None
    if folder is not None:
        extra = json.dumps({"task": "classifier", "quantize": job.quantize, "max_length": job.max_length})
        digest = sources.inputs_digest([folder, *(p for p in (job.head, job.label_map) if p)], extra)
    if previous := earlier_export(job.out, job.name, job.version, digest):
        return previous
    version = choose_version(job.out, job.name, job.version, job.force)

    with step(f"loading {job.model}"):
        tokenizer = transformer.load_fast_tokenizer(job.model)
        module, labels, config = _load_module(job, head)
    feed_names = transformer.feed_names_of(tokenizer)
    module.feed_names = feed_names  # type: ignore[assignment]
    max_length = job.max_length or transformer.max_length_of(config, folder, tokenizer)

    graph = transformer.EncoderGraph(
        module, tokenizer, feed_names, max_length, OUTPUT, len(labels), "labels", _parity, _int8_quality
    )
    source = {
        "model": job.model,
        "kind": "local" if folder else "hub",
        "head": str(job.head) if job.head else None,
        "label_map": str(job.label_map) if job.label_map else None,
        "architecture": "embedding+linear-head" if head else "sequence-classification",
        "inputs_sha256": digest,
    }
    return pipeline.write_version(
        job.out, job.name, version, graph, job.quantize, task=TASK_CLASSIFICATION, labels=labels, source=source
    )


def _load_module(job: ClassifierExport, head: _Head | None) -> tuple[torch.nn.Module, list[str], Any]:
    """The module to trace (probabilities out), its labels and the Hugging Face config of its body."""
    if head is None:
        model = sources.load(job.model, "model", AutoModelForSequenceClassification.from_pretrained)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return _SequenceClassifier(model).eval(), labels, model.config
    body = sources.load(job.model, "model", AutoModel.from_pretrained)
    hidden = int(body.config.hidden_size)
    if head.coef.shape[1] != hidden:
        raise ExportError(
            f"head {job.head} expects {head.coef.shape[1]}-dimensional embeddings, but {job.model} produces {hidden}"
        )
    return _EmbeddingClassifier(body, head.coef, head.intercept).eval(), head.labels, body.config


def _parity(onnx_probs: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """The ONNX probabilities against PyTorch's; raises when they differ."""
    max_diff = float(np.abs(onnx_probs - expected).max())
    say(f"[export] fp32 max abs diff vs PyTorch: {max_diff:.2e} (limit {FP32_TOLERANCE:.0e})")
    if not max_diff <= FP32_TOLERANCE:
        raise ExportError(
            f"parity check failed: ONNX probabilities differ from PyTorch by {max_diff:.2e} "
            f"(limit {FP32_TOLERANCE:.0e}); the model likely uses an op the exporter does not trace right"
        )
    return {
        "reference": "pytorch",
        "texts": len(onnx_probs),
        "padded_batch": True,
        "fp32_max_abs_diff": max_diff,
        "tolerance": FP32_TOLERANCE,
        "top1_agreement_fp32_vs_pytorch": _agreement(onnx_probs, expected),
    }


def _int8_quality(quantized: np.ndarray, fp32: np.ndarray) -> dict[str, Any]:
    agreement = _agreement(quantized, fp32)
    say(f"[export] int8 top-1 agreement with fp32: {agreement:.3f}")
    return {"top1_agreement_vs_fp32": agreement, "max_abs_diff_vs_fp32": float(np.abs(quantized - fp32).max())}


class _SequenceClassifier(torch.nn.Module):
    """Softmax over a Hugging Face sequence classifier's logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.feed_names: list[str] = []

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        logits = self.model(**dict(zip(self.feed_names, tensors, strict=True))).logits
        return torch.softmax(logits, dim=-1)


class _EmbeddingClassifier(torch.nn.Module):
    """Body -> mean pooling over the attention mask -> L2 normalise -> linear head -> softmax."""

    def __init__(self, body: torch.nn.Module, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        self.body = body
        self.feed_names: list[str] = []
        self.binary = coef.shape[0] == 1
        self.head_weight: torch.Tensor
        self.head_bias: torch.Tensor
        self.register_buffer("head_weight", torch.tensor(coef, dtype=torch.float32))
        self.register_buffer("head_bias", torch.tensor(intercept, dtype=torch.float32))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.feed_names, tensors, strict=True))
        hidden = self.body(**feeds).last_hidden_state
        mask = feeds["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        embedding = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        logits = embedding @ self.head_weight.T + self.head_bias
        if self.binary:  # scikit-learn's binary head scores the positive class only
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class _Head:
    coef: np.ndarray
    intercept: np.ndarray
    labels: list[str]


def _load_head(path: Path, label_map_path: Path | None) -> _Head:
    import joblib

    if not path.is_file():
        raise ExportError(f"head file {path} does not exist")
    try:
        head = joblib.load(path)
    except Exception as err:
        raise ExportError(f"cannot read head file {path} with joblib: {err}") from err
    missing = [a for a in ("coef_", "intercept_", "classes_") if not hasattr(head, a)]
    if missing:
        raise ExportError(f"head {path} is not a fitted scikit-learn linear model (missing {', '.join(missing)})")
    coef = np.asarray(head.coef_, dtype=np.float32)
    intercept = np.atleast_1d(np.asarray(head.intercept_, dtype=np.float32))
    classes = [str(c) for c in head.classes_]
    if coef.ndim != 2 or coef.shape[0] not in (1, len(classes)):
        raise ExportError(f"head {path}: coef_ shape {coef.shape} does not fit {len(classes)} classes")
    mapping: dict[str, str] = {}
    if label_map_path is not None:
        if not label_map_path.is_file():
            raise ExportError(f"label map {label_map_path} does not exist")
        raw = (
            json.loads(label_map_path.read_text()) if label_map_path.suffix == ".json" else joblib.load(label_map_path)
        )
        mapping = _label_names(dict(raw))
    return _Head(coef, intercept, [mapping.get(c, c) for c in classes])


def _label_names(raw: dict[Any, Any]) -> dict[str, str]:
    """Class id -> label name from a label map written either way round (id -> name, or name -> id)."""
    mapping: dict[str, str] = {}
    for key, value in raw.items():
        key, value = str(key), str(value)
        if key.lstrip("-").isdigit() and not value.lstrip("-").isdigit():
            mapping[key] = value
        elif value.lstrip("-").isdigit() and not key.lstrip("-").isdigit():
            mapping[value] = key
        else:
            mapping.setdefault(key, value)
    return mapping


def _agreement(left: np.ndarray, right: np.ndarray) -> float:
    return float((left.argmax(axis=1) == right.argmax(axis=1)).mean())
