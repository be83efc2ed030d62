"""`make up` (services.dev.stack): a service that cannot start is reported with its own error line and where its
log is, and the local Prometheus config it writes loads the project's alert rules (checked by promtool)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.dev import stack
from services.dev.launcher import free_port

pytestmark = pytest.mark.e2e


def promtool() -> str:
    """The one on PATH, else the one `make test` unpacks into the venv (as the Makefile finds it)."""
    found = shutil.which("promtool") or str(Path(sys.prefix) / "prometheus" / "usr" / "bin" / "promtool")
    assert Path(found).exists(), "no promtool: `make prometheus` unpacks it"
    return found


def test_a_service_that_cannot_start_is_reported_with_its_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    missing = tmp_path / "no-models"
    ports = stack.Ports(*(free_port() for _ in range(8)))
    assert stack.up(run, missing, prometheus=shutil.which("true"), ports=ports) == 1
    reported = capsys.readouterr().err
    assert "make up failed: classifier exited with code 2 while starting" in reported
    assert f"cannot start classifier: model repository {missing} does not exist" in reported
    assert str(run / "classifier.log") in reported

    checked = subprocess.run(
        [promtool(), "check", "config", str(run / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert str(stack.RULES_FILE) in checked.stdout + checked.stderr  # promtool checked the rule file it names
