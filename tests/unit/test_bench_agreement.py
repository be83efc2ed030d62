"""bench.agreement on an exported tiny generator: a version is compared token by token with the fp32 one, on the
prompts as the generator serves them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.agreement import run
from services.core.manifest import MANIFEST_FILE, Manifest


def relabel(folder: Path, version: int, method: str) -> None:
    """Make the version folder's manifest say `version`, quantized by `method`."""
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data["version"] = version
    data["quantization"] = {"method": method}
    Manifest.from_dict(data).write(folder)


def test_a_version_with_the_fp32_weights_agrees_on_every_token(generator_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(generator_repo / "llama", tmp_path / "llama")
    shutil.copytree(tmp_path / "llama" / "1", tmp_path / "llama" / "2")
    relabel(tmp_path / "llama" / "2", 2, "same-weights")

    report = run(tmp_path, "llama", messages=2, tokens=6, peer_url=None)

    assert report["reference"] == "v1 (fp32)" and report["prompts"] == 5 and report["greedy_tokens"] == 6
    assert report["versions"] == {
        "v2": {
            "method": "same-weights",
            "token_agreement": 1.0,
            "prompts_identical": 5,
            "first_token_differs": 0,
            "agrees_enough_to_serve": True,
        }
    }


def test_a_repository_without_an_fp32_version_names_the_fix(generator_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(generator_repo / "llama", tmp_path / "llama")
    relabel(tmp_path / "llama" / "1", 1, "int8")

    with pytest.raises(SystemExit, match=r"no fp32 version of .llama.*export defaults"):
        run(tmp_path, "llama", messages=2, tokens=6, peer_url=None)
