"""Export sentence-embedding models: a Hugging Face encoder body + pooling (mean over the attention mask, or the
first token) + optional L2 normalisation, as one graph from token ids to one vector per text.

Pooling and normalisation default to what a sentence-transformers folder declares (1_Pooling/config.json,
modules.json), else mean pooling without normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from export import pipeline, sources, transformer
from export.errors import ExportError
from export.package import choose_version, earlier_export
from export.progress import say, step
from services.core.manifest import TASK_EMBEDDING, Manifest

POOLINGS = ("mean", "cls")
MIN_COSINE = 0.9999  # per text, ONNX fp32 against PyTorch on a padded batch
OUTPUT = "embeddings"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class EncoderExport:
    """What to export and where; None for pooling or normalize means: as the model folder declares."""

    model: str
    name: str
    out: Path
    version: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    quantize: str | None = None  # None or "int8"
    max_length: int | None = None
    force: bool = False


def export_encoder(job: EncoderExport) -> tuple[Manifest, Path]:
    """Export, check parity (cosine with PyTorch per text), optionally quantize, write job.out/name/version."""
    folder = sources.check_source(job.model)
    pooling, normalize = _pooling_of(job, folder)
    digest = None
    if folder is not None:
        options = {"task": "encoder", "pooling": pooling, "normalize": normalize, "quantize": job.quantize}
        digest = sources.inputs_digest([folder], json.dumps(options | {"max_length": job.max_length}))
    if previous := earlier_export(job.out, job.name, job.version, digest):
        return previous
    version = choose_version(job.out, job.name, job.version, job.force)

    with step(f"loading {job.model}"):
        tokenizer = transformer.load_fast_tokenizer(job.model)
        body = sources.load(job.model, "model", AutoModel.from_pretrained)
        feed_names = transformer.feed_names_of(tokenizer)
        module = PooledEncoder(body, feed_names, pooling, normalize).eval()
    max_length = job.max_length or transformer.max_length_of(body.config, folder, tokenizer)
    dimension = int(body.config.hidden_size)

    graph = transformer.EncoderGraph(
        module, tokenizer, feed_names, max_length, OUTPUT, dimension, "dimensions", _parity, _int8_quality
    )
    return pipeline.write_version(
        job.out,
        job.name,
        version,
        graph,
        job.quantize,
        task=TASK_EMBEDDING,
        source={"model": job.model, "kind": "local" if folder else "hub", "inputs_sha256": digest},
        embedding={"pooling": pooling, "normalized": normalize, "dimension": dimension},
    )


class PooledEncoder(torch.nn.Module):
    """Body -> pooling (mean over the attention mask, or the first token) -> optional L2 normalisation."""

    def __init__(self, body: torch.nn.Module, feed_names: list[str], pooling: str, normalize: bool) -> None:
        super().__init__()
        self.body = body
        self.feed_names = feed_names
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.feed_names, tensors, strict=True))
        hidden = self.body(**feeds).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = feeds["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


def _pooling_of(job: EncoderExport, folder: Path | None) -> tuple[str, bool]:
    """(pooling, normalize): the job's, else the sentence-transformers folder's, else mean without normalising."""
    pooling, normalize = job.pooling, job.normalize
    if folder is not None and pooling is None and (folder / "1_Pooling" / "config.json").is_file():
        declared = json.loads((folder / "1_Pooling" / "config.json").read_text())
        pooling = "cls" if declared.get("pooling_mode_cls_token") else "mean"
    if folder is not None and normalize is None and (folder / "modules.json").is_file():
        normalize = any(m.get("type") == NORMALIZE_MODULE for m in json.loads((folder / "modules.json").read_text()))
    pooling = pooling or "mean"
    if pooling not in POOLINGS:
        raise ExportError(f"--pooling {pooling}: use one of {', '.join(POOLINGS)}")
    return pooling, bool(normalize)


def cosine_per_row(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return np.sum(left * right, axis=1) / np.maximum(norms, 1e-12)


def _parity(vectors: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """The ONNX vectors against PyTorch's, text by text; raises when one points elsewhere."""
    worst = float(cosine_per_row(vectors, expected).min())
    say(f"[export] fp32 lowest cosine similarity with PyTorch: {worst:.6f} (limit {MIN_COSINE})")
    if not worst >= MIN_COSINE:
        raise ExportError(
            f"parity check failed: an ONNX embedding has cosine similarity {worst:.6f} with PyTorch's "
            f"(limit {MIN_COSINE}); the model likely uses an op the exporter does not trace right"
        )
    return {
        "reference": "pytorch",
        "texts": len(vectors),
        "padded_batch": True,
        "min_cosine_fp32_vs_pytorch": worst,
        "min_cosine_limit": MIN_COSINE,
        "fp32_max_abs_diff": float(np.abs(vectors - expected).max()),
    }


def _int8_quality(quantized: np.ndarray, fp32: np.ndarray) -> dict[str, Any]:
    cosines = cosine_per_row(quantized, fp32)
    say(f"[export] int8 cosine similarity with fp32: mean {cosines.mean():.4f}, lowest {cosines.min():.4f}")
    return {"mean_cosine_vs_fp32": float(cosines.mean()), "min_cosine_vs_fp32": float(cosines.min())}
