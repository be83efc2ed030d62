"""Builds ecomserve-client: the Python code protoc generates from the repository's protos/ (messages, gRPC stubs
and type stubs), as the packages `ecomserve.<service>.v1` and `inference`, the same imports as the server's.
The code is generated afresh on every build, so the package always matches the protos it was built from."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpc_tools import protoc  # a build requirement (pyproject.toml)
from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parents[1] / "protos"
GENERATED = HERE / "build" / "generated"


def generate() -> None:
    if not PROTOS.is_dir():
        raise SystemExit(f"{PROTOS} not found: build the client from the ecomserve repository (clients/python)")
    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.mkdir(parents=True)
    files = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    out = [f"--python_out={GENERATED}", f"--pyi_out={GENERATED}", f"--grpc_python_out={GENERATED}"]
    if protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", *out, *files]) != 0:
        raise SystemExit("protoc failed on the protos")
    for folder in {path.parent for path in GENERATED.rglob("*_pb2.py")}:
        (folder / "py.typed").touch()


generate()
setup(
    package_dir={"": "build/generated"},
    packages=find_namespace_packages(where=str(GENERATED)),
    package_data={"": ["*.pyi", "py.typed"]},
)
