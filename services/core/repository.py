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
        """How logs and messages name it: name/version."""
        return f"{self.name}/{self.version}"

    @property
    def metric_labels(self) -> tuple[str, str]:
        """Its `model` and `version` metric labels."""
        return self.name, str(self.version)

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


Fingerprint = tuple[tuple[str, float, int], ...]


def folder_fingerprint(folder: Path) -> Fingerprint:
    """What tells that a version folder's files changed (or are still being copied): name, mtime and size of each."""
    entries = []
    for path in sorted(folder.iterdir()):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked
            continue
        entries.append((path.name, stat.st_mtime, stat.st_size))
    return tuple(entries)


def discover(
    root: Path, tasks: tuple[str, ...], names: tuple[str, ...] = (), max_versions: int = 0
) -> list[ModelVersion]:
    """Every version of every model of one of `tasks` under root (only `names` when given; each must exist), or
    each model's `max_versions` highest ones."""
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
        found.extend(matching[-max_versions:] if max_versions else matching)
    if not found:
        raise ModelFailure(f"no {kinds} models under {root}")
    return found


class Registry(Generic[M]):
    """name -> version -> loaded model. The default version of a name is its highest. `states` holds the versions
    that do not serve (yet, or any more): (name, version) -> (status, message), status one of the ModelStatus
    names LOADING, UNLOADING, FAILED."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, M]] = {}
        self.states: dict[tuple[str, int], tuple[str, str]] = {}
        self.ready = False

    def add(self, name: str, version: int, model: M) -> None:
        """Serve `model`; the highest version of a name becomes its default at once."""
        self._models.setdefault(name, {})[version] = model
        self.states.pop((name, version), None)

    def remove(self, name: str, version: int) -> M:
        """Stop handing out a version (requests that already have it finish on it); returns the model."""
        versions = self._models[name]
        model = versions.pop(version)
        if not versions:
            del self._models[name]
        return model

    def loaded(self) -> set[tuple[str, int]]:
        return {(name, version) for name, versions in self._models.items() for version in versions}

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
