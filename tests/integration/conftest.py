"""Classifier servers on loopback ports: in-process (grpc.aio on the test loop) or as subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2_grpc

from services.classifier.app import ClassifierApp
from services.classifier.config import ClassifierConfig


@asynccontextmanager
async def running_classifier(models: Path, **overrides: Any) -> AsyncIterator[ClassifierApp]:
    config = ClassifierConfig(**{"host": "127.0.0.1", "port": 0, "metrics_port": 0, "models": str(models), **overrides})
    app = ClassifierApp(config)
    await app.server.start()
    await app.load()
    await app.server.set_serving(True)
    try:
        yield app
    finally:
        await app.server.drain(1.0)
        await app.close()


@asynccontextmanager
async def stub_for(app: ClassifierApp) -> AsyncIterator[classifier_pb2_grpc.ClassifierServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}") as channel:
        yield classifier_pb2_grpc.ClassifierServiceStub(channel)


@pytest.fixture
def classifier(model_repo: Path) -> Callable[..., Any]:
    """`async with classifier(**config_overrides) as app` starts a server on a free port over model_repo."""
    return lambda **overrides: running_classifier(model_repo, **overrides)
