"""The gateway re-reads its routing table and prompt templates when their files change, without a restart; a file
that no longer parses is logged and what was loaded stays."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.config import PACKAGE_DIR
from tests.e2e.conftest import API_KEY, Launcher, wait_until

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)


def test_routing_and_templates_follow_their_files(
    launcher: Launcher, model_repo: Path, generator_repo: Path, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PACKAGE_DIR / "templates", templates)
    classifier = launcher.classifier(model_repo)
    generator = launcher.generator(generator_repo)
    gateway = launcher.gateway([classifier], generator, "--templates", str(templates))
    for process in (classifier, generator, gateway):
        process.wait_serving()
    routing = launcher.folder / "routing.toml"
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        def queue() -> str:
            routed = stub.RouteMessage(gateway_pb2.RouteMessageRequest(message="where is my order"), metadata=AUTH)
            return routed.queue

        def template() -> str:
            request = gateway_pb2.DescribeProductRequest(title="Wool socks", max_words=10, seed=1)
            return stub.DescribeProduct(request, metadata=AUTH, timeout=60).template

        # Every intent goes to one queue: whatever the tiny model answers, the new table decides.
        routing.write_text('model = "intent"\ntop_k = 3\nmin_score = 0.0\ndefault_queue = "moved"\n[queues]\n')
        wait_until(lambda: queue() == "moved", "the new routing table is used", 20)

        (templates / "describe_product" / "v2.toml").write_text(
            (templates / "describe_product" / "v1.toml").read_text().replace("product descriptions", "short blurbs")
        )
        wait_until(lambda: template() == "describe_product/v2", "the new template version is the default", 20)

        (templates / "describe_product" / "v3.toml").write_text("this is not TOML = = =")
        routing.write_text("[queues\n")
        time.sleep(3)  # more than a look at the files
        assert template() == "describe_product/v2" and queue() == "moved", "a broken file replaced a working one"
    log = gateway.log.read_text()
    assert "could not be reloaded; what was loaded stays" in log
