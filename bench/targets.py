"""How benchmarks report: a target as the measured value, the bound and whether it was met, and the command line
the service benchmarks share (a model repository, a model name, seconds per load point; JSON on stdout)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core.manifest import Manifest, version_folders


def check(value: float, op: str, bound: float) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound
    return {"value": round(value, 3), "target": f"{op} {bound}", "met": met}


def benchmark_main(
    run: Callable[..., dict[str, Any]],
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    name: str,
    name_help: str,
    seconds: float,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse `--models --name --seconds` (and the benchmark's own options, passed to `run` by keyword), run the
    benchmark and print its report as JSON."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--name", default=name, help=name_help)
    parser.add_argument("--seconds", type=float, default=seconds, help="measured seconds per load point")
    if add_arguments is not None:
        add_arguments(parser)
    options = vars(parser.parse_args(argv))
    models, name, seconds = options.pop("models"), options.pop("name"), options.pop("seconds")
    print(json.dumps(run(models, name, seconds, **options), indent=2))
    return 0


def highest_version(models: Path, name: str) -> tuple[int, Path, Manifest]:
    """(version, folder, manifest) of the version a service serves by default; exits naming the fix when the
    repository has no such model."""
    versions = version_folders(models, name)
    if not versions:
        raise SystemExit(f"no model {name!r} under {models}; run `python -m export defaults --out {models}`")
    version = max(versions)
    return version, versions[version], Manifest.read(versions[version])
