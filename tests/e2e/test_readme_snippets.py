"""The README's Python snippets run as written against a live stack, with only the addresses and the API key file
pointing at this test's services (tiny models under the default models' names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.wire import DEFAULT_GENERATOR_MODEL
from tests.e2e.conftest import API_KEY, Launcher

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_snippets_for_every_client() -> None:
    clients = ["tritonclient", "ecomserve.generator.v1", "openai"]
    assert all(any(client in snippet for snippet in SNIPPETS) for client in clients), clients


def test_every_readme_snippet_runs(launcher: Launcher, model_repo: Path, generator_repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_repo / "intent", models / "intent")
    shutil.copytree(generator_repo / "llama", models / DEFAULT_GENERATOR_MODEL)
    classifier = launcher.start("services.classifier", "--models", str(models))
    generator = launcher.start("services.generator", "--models", str(models))
    gateway = launcher.gateway([classifier], generator)
    for process in (classifier, generator, gateway):
        process.wait_serving()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "api-key").write_text(API_KEY + "\n")  # where `make up` leaves it
    addresses = {
        "127.0.0.1:50051": classifier.address,
        "127.0.0.1:50052": generator.address,
        "http://127.0.0.1:8080": gateway.http,
    }
    for snippet in SNIPPETS:
        for documented, actual in addresses.items():
            snippet = snippet.replace(documented, actual)
        ran = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert ran.returncode == 0, f"{snippet}\n{ran.stderr}"
        assert ran.stdout.strip(), snippet
