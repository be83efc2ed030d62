"""The one export pipeline. Every task (classifier, encoder, generator) gives its steps; `write_version` runs them
in order (trace, check against PyTorch, publish the fp32 or quantized graph, save the tokenizer files, describe
the graph) in a staging folder that becomes models/<name>/<version>/ only when every step passed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from export.package import staging_folder, tool_versions
from export.progress import say
from services.core.manifest import MODEL_FILE, Manifest, sha256_of

OPSET = 17


class ExportSteps(Protocol):
    """One task's steps, called once each, in this order."""

    def trace(self, path: Path) -> None:
        """Write the fp32 ONNX graph to `path`."""

    def check(self, fp32_path: Path) -> dict[str, Any]:
        """Compare the fp32 graph with PyTorch; the manifest's parity entry, or ExportError."""

    def publish(self, method: str | None, fp32_path: Path, model_path: Path) -> dict[str, Any]:
        """Put the served graph at model_path (fp32, or quantized by `method`); the quantization entry."""

    def save_files(self, folder: Path) -> None:
        """The tokenizer (and chat template) the services load."""

    def manifest_fields(self) -> dict[str, Any]:
        """What the graph is: max_sequence_length, inputs, outputs, special tokens and the task's own fields (and
        its opset, when not OPSET)."""

    def summary(self) -> str:
        """A few words for the closing log line, e.g. "157 labels"."""


def write_version(
    out: Path, name: str, version: int, steps: ExportSteps, quantize: str | None, **fields: Any
) -> tuple[Manifest, Path]:
    """Run `steps` into out/name/version; `fields` are the rest of the manifest (task, source, ...)."""
    with staging_folder(out, name, version) as stage:
        fp32_path = stage / "model.fp32.onnx"
        steps.trace(fp32_path)
        parity = steps.check(fp32_path)
        model_path = stage / MODEL_FILE
        quantization = steps.publish(quantize, fp32_path, model_path)
        steps.save_files(stage)
        manifest = Manifest(
            name=name,
            version=version,
            sha256=sha256_of(model_path),
            quantization=quantization,
            parity=parity,
            tool_versions=tool_versions(),
            **{"opset": OPSET, **steps.manifest_fields()},
            **fields,
        )
        manifest.write(stage)
    target = out / name / str(version)
    size_mb = (target / MODEL_FILE).stat().st_size / 1e6
    say(f"[export] wrote {target} ({size_mb:.1f} MB, {steps.summary()})")
    return manifest, target
