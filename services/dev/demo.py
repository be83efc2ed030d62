"""`make demo`: start the classifier, the generator and the gateway on the exported defaults, then through the
gateway route sample customer messages, find reviews that say the same thing (embeddings), describe a product
(JSON over HTTP), stream a reply draft (gRPC), write three variants of an SMS (gRPC) and analyze reviews with a
summary (JSON over HTTP); stop everything, also when something fails."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from export.defaults import EMBED, INTENT
from services.core.wire import DEFAULT_GENERATOR_MODEL as GENERATOR
from services.dev.launcher import exit_on_termination, free_port, service

MESSAGES = [
    "Where is my order? It was supposed to arrive yesterday.",
    "I want to talk to a real person, not a bot.",
    "This is unacceptable. I am furious with your terrible service!",
]
REVIEWS = [
    "The sole came off after two weeks of running.",
    "Great grip on wet trails and very comfortable.",
    "After a month the shoe's sole started to peel away.",
    "Comfortable from the first run, and they hold the trail well in the rain.",
]
PRODUCT = {
    "title": "Trail running shoe",
    "category": "running shoes",
    "attributes": [
        {"key": "upper", "value": "recycled mesh"},
        {"key": "weight", "value": "260 g"},
        {"key": "drop", "value": "6 mm"},
    ],
    "tone": "energetic",
    "maxWords": 60,
    "seed": "7",
}
MARKETING = gateway_pb2.WriteMarketingCopyRequest(
    title="Merino wool hiking socks",
    category="socks",
    attributes=[
        gateway_pb2.ProductAttribute(key="material", value="merino wool"),
        gateway_pb2.ProductAttribute(key="pack", value="3 pairs"),
    ],
    audience="hikers",
    channel="sms",
    variants=3,
    seed=7,
)
REPLY = gateway_pb2.DraftReplyRequest(
    message="Where is my order? It was supposed to arrive yesterday.",
    order=gateway_pb2.OrderContext(
        order_id="4471",
        status="shipped on Monday, arrives on Thursday",
        items=[gateway_pb2.OrderItem(name="Trail running shoe", quantity=1, status="shipped")],
    ),
    agent_name="Sam from Support",
    max_words=60,
    seed=7,
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dev.demo", description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    args = parser.parse_args()
    exit_on_termination()
    api_key = secrets.token_urlsafe(24)
    common = ["--metrics-port", "0", "--log-level", "warning"]
    models = ["--models", str(args.models), *common]
    logs = Path(tempfile.mkdtemp(prefix="ecomserve-demo-"))  # readable by its owner only
    keys_file = logs / "api-keys"  # not on the command line: it would show in `ps`
    keys_file.write_text(f"demo={api_key}\n")
    http_port = free_port()
    try:
        print(f"starting the classifier, the generator and the gateway (logs in {logs}) ...", flush=True)
        with (
            service(
                "services.classifier", *models, "--model-names", f"{INTENT},{EMBED}", log=logs / "classifier.log"
            ) as cls,
            service("services.generator", *models, "--model-names", GENERATOR, log=logs / "generator.log") as gen,
            service(
                "services.gateway",
                *common,
                "--classifier",
                cls,
                "--generator",
                gen,
                "--http-port",
                str(http_port),
                "--api-keys-file",
                str(keys_file),
                log=logs / "gateway.log",
            ) as gateway,
        ):
            print(f"gateway ready: gRPC {gateway}, HTTP 127.0.0.1:{http_port}\n")
            with grpc.insecure_channel(gateway) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                metadata = (("authorization", f"Bearer {api_key}"),)
                route_messages(stub, metadata)
                similar_reviews(stub, metadata)
                describe_product(http_port, api_key)
                draft_reply(stub, metadata)
                marketing_copy(stub, metadata)
                analyze_reviews(http_port, api_key)
        return 0
    except (RuntimeError, OSError, grpc.RpcError) as error:
        print(f"\ndemo failed: {error}\n(service logs in {logs})", file=sys.stderr)
        return 1


def route_messages(stub: gateway_pb2_grpc.GatewayServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
    print("RouteMessage (gRPC): which support queue each customer message goes to\n")
    for message in MESSAGES:
        routed = stub.RouteMessage(gateway_pb2.RouteMessageRequest(message=message), metadata=metadata, timeout=30)
        intents = ", ".join(f"{intent.label} {intent.score:.2f}" for intent in routed.intents)
        print(f"  {message}\n    -> queue {routed.queue!r} ({routed.reason}); intents: {intents}")


def similar_reviews(stub: gateway_pb2_grpc.GatewayServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
    print(f"\nEmbedTexts (gRPC, {EMBED}): the review each review is closest to (cosine similarity)\n")
    request = gateway_pb2.EmbedTextsRequest(model=EMBED, texts=REVIEWS, normalize=True)
    embedded = stub.EmbedTexts(request, metadata=metadata, timeout=30)
    vectors = np.array([list(e.values) for e in embedded.embeddings])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1.0)
    for index, review in enumerate(REVIEWS):
        closest = int(similarity[index].argmax())
        print(f"  {review}\n    ~ {REVIEWS[closest]} ({similarity[index, closest]:.2f})")


def post(http_port: int, api_key: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": api_key},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def describe_product(http_port: int, api_key: str) -> None:
    print(f"\nPOST /v1/describe-product (JSON over HTTP): {PRODUCT['title']}\n")
    described = post(http_port, api_key, "/v1/describe-product", PRODUCT)
    print(f"  {described['description']}\n")
    print(
        f"  [{described['template']}, {described['model']} v{described['modelVersion']}, "
        f"{described['usage']['completionTokens']} tokens, {described['finishReason']}]"
    )


def draft_reply(stub: gateway_pb2_grpc.GatewayServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
    print(f"\nDraftReply (gRPC, streamed) to: {REPLY.message}\n\n  ", end="", flush=True)
    for message in stub.DraftReply(REPLY, metadata=metadata, timeout=120):
        print(message.text.replace("\n", "\n  "), end="", flush=True)
        if message.finish_reason:
            finish = gateway_pb2.FinishReason.Name(message.finish_reason)
            print(f"\n\n  [{message.template}, {message.usage.completion_tokens} tokens, {finish}]\n")


def marketing_copy(stub: gateway_pb2_grpc.GatewayServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
    print(f"WriteMarketingCopy (gRPC, streamed): 3 SMS variants for {MARKETING.title}, written together\n")
    *_, last = stub.WriteMarketingCopy(MARKETING, metadata=metadata, timeout=120)
    for variant in last.variants:
        cut = ", cut to 160 characters" if variant.cut_to_limit else ""
        tokens = variant.usage.completion_tokens
        print(f"  {variant.index + 1}. {variant.text}\n     [seed {variant.seed}, {tokens} tokens{cut}]")


def analyze_reviews(http_port: int, api_key: str) -> None:
    print(f"\nPOST /v1/analyze-reviews (JSON over HTTP): {len(REVIEWS)} reviews, labels and a summary\n")
    body = {"reviews": [{"text": review} for review in REVIEWS], "topK": 1, "summarize": True, "seed": "7",
            "product": PRODUCT["title"], "summaryMaxWords": 60}  # fmt: skip
    analyzed = post(http_port, api_key, "/v1/analyze-reviews", body)
    for review, result in zip(REVIEWS, analyzed["results"], strict=True):
        best = result["labels"][0]
        print(f"  {review}\n    -> {best['label']} {best['score']:.2f}")
    counts = ", ".join(f"{stat['label']} x{stat['count']}" for stat in analyzed["labels"])
    summary = analyzed["summary"]
    print(f"\n  best labels: {counts}\n\n  summary of {summary['reviewsUsed']} reviews: {summary['text']}")


if __name__ == "__main__":
    sys.exit(main())
