"""Version folders of the model repository: choosing the version, refusing to overwrite, writing atomically."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from export.errors import ExportError
from export.progress import say
from services.core.manifest import Manifest, version_folders


def choose_version(out: Path, name: str, version: int | None, force: bool) -> int:
    """The requested version (refused when it exists, unless force) or one past the highest one there."""
    existing = version_folders(out, name)
    if version is None:
        return max(existing, default=0) + 1
    if version < 1:
        raise ExportError(f"--version must be >= 1, got {version}")
    target = out / name / str(version)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; pass --force to overwrite it, or omit --version")
    return version


@contextmanager
def staging_folder(out: Path, name: str, version: int) -> Iterator[Path]:
    """A scratch folder that becomes out/name/version only when the export finished and passed parity."""
    (out / name).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=out / name))
    try:
        yield scratch
        target = out / name / str(version)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def tool_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "ecomserve"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def earlier_export(
    out: Path, name: str, version: int | None, inputs_sha256: str | None
) -> tuple[Manifest, Path] | None:
    """An earlier export of the very same inputs and options (manifest and folder), to skip the work; only when
    no version was asked for and the inputs are local files (a digest)."""
    if version is not None or inputs_sha256 is None:
        return None
    for folder in sorted(version_folders(out, name).values()):
        manifest = Manifest.read(folder)
        if manifest.source.get("inputs_sha256") == inputs_sha256 and (folder / "model.onnx").is_file():
            say(f"[export] {name} v{manifest.version} already exported from the same inputs; skipping")
            return manifest, folder
    return None
