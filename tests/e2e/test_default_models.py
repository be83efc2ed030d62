"""The gateway's marketing-copy and review jobs on the real default models, served as `make demo` serves them: the
int8 `intent` model (the routing model) and SmolLM2-135M-Instruct, behind the gateway's own routing table and
templates. The README's JSON examples are the requests. Limits and errors are covered on tiny models
(test_gateway_jobs.py); these check that real answers hold together."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from google.protobuf import json_format

from export.defaults import GENERATOR, INTENT
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, Launcher, Process, readme_json_requests

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
SMS_CHARS = 160


@dataclass
class Defaults:
    classifier: Process
    gateway: Process
    stub: gateway_pb2_grpc.GatewayServiceStub


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory, default_models: Path) -> Iterator[Defaults]:
    launcher = Launcher(tmp_path_factory.mktemp("defaults-stack"))
    try:
        models = ["--models", str(default_models)]
        classifier = launcher.start("services.classifier", *models, "--model-names", INTENT)
        generator = launcher.start("services.generator", *models, "--model-names", GENERATOR)
        gateway = launcher.start(
            "services.gateway",
            *("--classifier", classifier.address, "--generator", generator.address),
            *("--api-keys-file", str(launcher.api_keys_file())),
            http=True,
        )
        for process in (classifier, generator, gateway):
            process.wait_serving()
        with grpc.insecure_channel(gateway.address) as channel:
            yield Defaults(classifier, gateway, gateway_pb2_grpc.GatewayServiceStub(channel))
    finally:
        launcher.stop_all()


def example(path: str) -> dict:
    [body] = [body for route, body in readme_json_requests() if route == path]
    return body


def test_marketing_copy_variants_from_the_readme_example(defaults: Defaults) -> None:
    body = example("/v1/write-marketing-copy")
    request = json_format.ParseDict(body, gateway_pb2.WriteMarketingCopyRequest())
    *pieces, last = defaults.stub.WriteMarketingCopy(request, metadata=AUTH, timeout=120)
    assert last.model == GENERATOR and last.template == "marketing_copy/sms/v1"
    assert len(last.variants) == body["variants"]
    texts = [variant.text for variant in last.variants]
    assert all(texts) and len(set(texts)) == len(texts), texts
    assert all(len(text) <= SMS_CHARS for text in texts), texts
    for variant in last.variants:
        assert "".join(piece.text for piece in pieces if piece.variant == variant.index) == variant.text
        assert variant.usage.completion_tokens > 0

    again = {**body, "variants": 1, "seed": str(last.variants[1].seed)}
    reply = http_client.stream(f"{defaults.gateway.http}/v1/write-marketing-copy", again, API_KEY)
    assert reply.status == 200, reply.body
    assert reply.body[-1]["variants"][0]["text"] == texts[1]


def test_review_analysis_from_the_readme_example(defaults: Defaults) -> None:
    body = example("/v1/analyze-reviews")
    reply = http_client.call(f"{defaults.gateway.http}/v1/analyze-reviews", body, API_KEY)
    assert reply.status == 200, reply.body
    analyzed = json_format.ParseDict(reply.body, gateway_pb2.AnalyzeReviewsResponse())
    texts = [review["text"] for review in body["reviews"]]
    with grpc.insecure_channel(defaults.classifier.address) as channel:
        direct = classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model=INTENT, texts=texts, top_k=body["topK"]), timeout=60
        )
    assert analyzed.model == INTENT and [r.id for r in analyzed.results] == [r["id"] for r in body["reviews"]]
    for result, expected in zip(analyzed.results, direct.results, strict=True):
        assert [(s.label, s.score) for s in result.labels] == [(s.label, s.score) for s in expected.labels]
    best = [result.labels[0].label for result in direct.results]
    assert sorted((stat.label, stat.count) for stat in analyzed.labels) == sorted(
        (label, best.count(label)) for label in set(best)
    )
    assert not analyzed.rating_checked  # intent's labels are not positive and negative
    summary = analyzed.summary
    assert summary.reviews_used == len(texts) and summary.model == GENERATOR
    assert summary.text.strip() and summary.usage.completion_tokens > 0
