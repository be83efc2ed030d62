"""Classifier and generator servers on loopback ports, in-process (grpc.aio on the test loop)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2_grpc
from ecomserve.generator.v1 import generator_pb2_grpc

from services.classifier.app import ClassifierApp
from services.classifier.config import ClassifierConfig
from services.core.server import ServingServer
from services.dev.launcher import free_port
from services.generator.app import GeneratorApp
from services.generator.config import GeneratorConfig

LOOPBACK = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}


@asynccontextmanager
async def serving(app: ClassifierApp | GeneratorApp) -> AsyncIterator[None]:
    await app.server.start()
    await app.load()
    await app.server.set_serving(True)
    try:
        yield
    finally:
        await app.server.drain(1.0)
        await app.close()


@asynccontextmanager
async def running_classifier(models: Path, **overrides: Any) -> AsyncIterator[ClassifierApp]:
    app = ClassifierApp(ClassifierConfig(**{**LOOPBACK, "models": str(models), **overrides}))
    async with serving(app):
        yield app


@asynccontextmanager
async def running_generator(models: Path, **overrides: Any) -> AsyncIterator[GeneratorApp]:
    app = GeneratorApp(GeneratorConfig(**{**LOOPBACK, "models": str(models), **overrides}))
    async with serving(app):
        yield app


@asynccontextmanager
async def stub_for(app: ClassifierApp) -> AsyncIterator[classifier_pb2_grpc.ClassifierServiceStub]:
    async with grpc.aio.insecure_channel(address_of(app.server)) as channel:
        yield classifier_pb2_grpc.ClassifierServiceStub(channel)


@asynccontextmanager
async def generator_stub_for(app: GeneratorApp) -> AsyncIterator[generator_pb2_grpc.GeneratorServiceStub]:
    async with grpc.aio.insecure_channel(address_of(app.server)) as channel:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)


def address_of(server: ServingServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def classifier(model_repo: Path) -> Callable[..., Any]:
    """`async with classifier(**config_overrides) as app` starts a server on a free port over model_repo."""
    return lambda **overrides: running_classifier(model_repo, **overrides)


@pytest.fixture
def generator(generator_repo: Path) -> Callable[..., Any]:
    """`async with generator(**config_overrides) as app` starts a generator on a free port over generator_repo."""
    return lambda **overrides: running_generator(generator_repo, **overrides)


@contextmanager
def spawned_service(
    module: str, models: Path, *flags: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m <module>` as a child process on a free loopback port (no metrics port); yields (child, HOST:PORT).
    The caller waits for SERVING; a child still running when the block ends is killed."""
    port = free_port()
    listen = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
    # The log goes to a file (a pipe nobody reads while the child runs would fill up); child.stderr reads it back.
    descriptor, log = tempfile.mkstemp(prefix=f"{module}-", suffix=".log")
    with os.fdopen(descriptor, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-m", module, "--models", str(models), *listen, *flags],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    child.stderr = open(log, "rb")  # closed below, with the child
    try:
        yield child, f"127.0.0.1:{port}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
        os.unlink(log)
