"""The model repository contract: models/<name>/<version>/{model.onnx, tokenizer.json, manifest.json}.

Written by export/, read by the services. Only the standard library here, so both sides can import it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
FORMAT_VERSION = 1

TASK_CLASSIFICATION = "text-classification"
TASK_GENERATION = "text-generation"
TASK_EMBEDDING = "feature-extraction"


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and axes of one graph input or output; axes are names (dynamic) or sizes."""

    name: str
    dtype: str
    shape: list[str | int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=list(data["shape"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a service needs to know about one exported model version, and how it was made."""

    task: str
    name: str
    version: int
    sha256: str
    max_sequence_length: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = field(default_factory=list)
    padding_side: str = "right"
    special_tokens: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    parity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    opset: int = 17
    decoder: dict[str, Any] = field(default_factory=dict)
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)  # pooling, normalized, dimension
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "name": self.name,
            "version": self.version,
            "model_file": MODEL_FILE,
            "sha256": self.sha256,
            "max_sequence_length": self.max_sequence_length,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "labels": list(self.labels),
            "padding_side": self.padding_side,
            "special_tokens": dict(self.special_tokens),
            "quantization": dict(self.quantization),
            "parity": dict(self.parity),
            "source": dict(self.source),
            "tool_versions": dict(self.tool_versions),
            "opset": self.opset,
            "decoder": dict(self.decoder),
            "generation_defaults": dict(self.generation_defaults),
            "embedding": dict(self.embedding),
            "notes": self.notes,
        }

    @property
    def quantizes_activations_per_run(self) -> bool:
        """Dynamic quantization: every onnxruntime run quantizes its activations with one scale for all its rows
        and padding, so a text's scores move with what shares its run (int8 `intent`: 0.02 at the median)."""
        return "dynamic" in str(self.quantization.get("method", ""))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest format_version {data.get('format_version')!r}")
        return cls(
            task=data["task"],
            name=data["name"],
            version=int(data["version"]),
            sha256=data["sha256"],
            max_sequence_length=int(data["max_sequence_length"]),
            inputs=[TensorSpec.from_dict(spec) for spec in data["inputs"]],
            outputs=[TensorSpec.from_dict(spec) for spec in data["outputs"]],
            labels=list(data.get("labels", [])),
            padding_side=data.get("padding_side", "right"),
            special_tokens=dict(data.get("special_tokens", {})),
            quantization=dict(data.get("quantization", {"method": "none"})),
            parity=dict(data.get("parity", {})),
            source=dict(data.get("source", {})),
            tool_versions=dict(data.get("tool_versions", {})),
            opset=int(data.get("opset", 17)),
            decoder=dict(data.get("decoder", {})),
            generation_defaults=dict(data.get("generation_defaults", {})),
            embedding=dict(data.get("embedding", {})),
            notes=data.get("notes", ""),
        )

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        return cls.from_dict(json.loads((folder / MANIFEST_FILE).read_text()))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_folders(repository: Path, name: str) -> dict[int, Path]:
    """Version number -> folder for every numeric subfolder of repository/name holding a manifest."""
    model_dir = repository / name
    if not model_dir.is_dir():
        return {}
    return {
        int(child.name): child
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / MANIFEST_FILE).is_file()
    }
