"""Loading Hugging Face models and tokenizers from a hub id or a local folder, with errors a user can act on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from export.errors import ExportError

T = TypeVar("T")

SUPPORTED_CLASSIFIERS = (
    "BERT, DistilBERT, RoBERTa, XLM-RoBERTa, MiniLM, ELECTRA, DeBERTa (AutoModelForSequenceClassification)"
)
SUPPORTED_GENERATORS = ("llama", "mistral", "qwen2", "gpt2")


def looks_local(model: str) -> bool:
    """A path-like argument (absolute, relative with a slash prefix, or existing) is a folder, not a hub id."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def check_source(model: str, gguf_file: str | None = None) -> Path | None:
    """Return the local folder for a local model (None for a hub id); fail clearly when it is not there."""
    if not looks_local(model):
        return None
    folder = Path(model).expanduser().resolve()
    if not folder.exists():
        raise ExportError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"--model {model}: expected a folder with config.json, got a file")
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise ExportError(f"GGUF file {gguf_file} not found in {folder}")
    elif not (folder / "config.json").is_file():
        raise ExportError(f"{folder} has no config.json: not a Hugging Face model folder")
    return folder


def gguf_path(model: str, folder: Path | None, gguf_file: str) -> Path:
    """The GGUF file itself: in the local folder, or the hub's cached download (transformers fetched it already)."""
    if folder is not None:
        return folder / gguf_file
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model, gguf_file))
    except OSError as err:
        raise ExportError(f"cannot download {gguf_file} of {model!r} from the Hugging Face hub: {err}") from err


def load(model: str, what: str, loader: Callable[..., T], **kwargs: Any) -> T:
    """Call a from_pretrained loader, turning missing files and unreachable hubs into one clear line."""
    try:
        return loader(model, **kwargs)
    except OSError as err:
        text = str(err)
        if looks_local(model):
            raise ExportError(f"cannot load the {what} from {model}: {text.splitlines()[0]}") from err
        raise ExportError(
            f"cannot download {model!r} from the Hugging Face hub (no network, or no such model). "
            "Download it where you have network and pass the local folder with --model ./path/to/folder"
        ) from err
    except ValueError as err:
        raise ExportError(f"cannot load the {what} from {model}: {str(err).splitlines()[0]}") from err


def inputs_digest(paths: list[Path], extra: str) -> str:
    """sha256 over the bytes of the given files (folders: every file inside) and the export options."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode())
            with file.open("rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
