"""Reading the model repository: discovering model versions for a task, verifying them, and looking them up."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from services.core.errors import ModelFailure, NotFound, Unavailable
from services.core.logs import note
from services.core.manifest import MODEL_FILE, Manifest, sha256_of, version_folders

M = TypeVar("M")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    folder: Path
    manifest: Manifest

    @property
    def label(self) -> str:
        """The model label of metrics and logs: name/version."""
        return f"{self.name}/{self.version}"

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    def verify(self) -> None:
        """Refuse a model file whose bytes are not the ones export wrote (sha256 in the manifest)."""
        actual = sha256_of(self.model_path)
        if actual != self.manifest.sha256:
            raise ModelFailure(
                f"{self.model_path}: sha256 {actual} does not match the manifest ({self.manifest.sha256}); "
                "re-export the model or restore the file"
            )


def discover(root: Path, tasks: tuple[str, ...], names: tuple[str, ...] = ()) -> list[ModelVersion]:
    """Every version of every model of one of `tasks` under root (only `names` when given; each must exist)."""
    if not root.is_dir():
        raise ModelFailure(f"model repository {root} does not exist; run `python -m export defaults --out {root}`")
    candidates = names or tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    kinds = " or ".join(tasks)
    found = []
    for name in candidates:
        versions = version_folders(root, name)
        matching = [
            ModelVersion(name, number, folder, manifest)
            for number, folder in sorted(versions.items())
            if (manifest := Manifest.read(folder)).task in tasks
        ]
        if names and not matching:
            raise ModelFailure(f"model {name!r} has no {kinds} version under {root}")
        found.extend(matching)
    if not found:
        raise ModelFailure(f"no {kinds} models under {root}")
    return found


class Registry(Generic[M]):
    """name -> version -> loaded model. The default version of a name is its highest."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, M]] = {}
        self.ready = False

    def add(self, name: str, version: int, model: M) -> None:
        self._models.setdefault(name, {})[version] = model

    def get(self, name: str, version: int = 0) -> tuple[int, M]:
        """(version, model); version 0 means the default. NotFound names what exists."""
        if not self.ready:
            raise Unavailable("models are still loading; retry shortly")
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"unknown model {name!r}; this replica serves: {known}")
        chosen = version or max(versions)
        if chosen not in versions:
            raise NotFound(f"model {name!r} has no version {version}; available: {sorted(versions)}")
        note(model=name, version=chosen)
        return chosen, versions[chosen]

    def __iter__(self) -> Iterator[tuple[str, int, M, bool]]:
        for name in sorted(self._models):
            default = max(self._models[name])
            for version, model in sorted(self._models[name].items()):
                yield name, version, model, version == default
