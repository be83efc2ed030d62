"""`make demo`: start the classifier and the generator on the exported defaults, classify sample customer
messages, stream a reply draft, stop both."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from ecomserve.generator.v1 import generator_pb2, generator_pb2_grpc

from services.launcher import service

MESSAGES = [
    "Where is my order? It was supposed to arrive yesterday.",
    "I want to talk to a real person, not a bot.",
    "This is the third time my package is late. I am really disappointed.",
    "Can I change the delivery address for order 4471?",
    "How do I return the shoes? They are too small.",
    "You charged my card twice for the same purchase!",
]
GENERATOR = "smollm2-135m-instruct"
REPLY_REQUEST = (
    "Write a short, polite reply to this customer. Order 4471 shipped on Monday and arrives Thursday.\n\n"
    "Customer: Where is my order? It was supposed to arrive yesterday."
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    args = parser.parse_args()
    common = ["--models", str(args.models), "--metrics-port", "0", "--log-level", "warning"]
    try:
        print("starting the classifier and the generator ...", flush=True)
        with (
            service("services.classifier", *common, "--model-names", "intent", quiet=False) as classifier,
            service("services.generator", *common, "--model-names", GENERATOR, quiet=False) as generator,
        ):
            classify(classifier)
            draft_reply(generator)
        return 0
    except (RuntimeError, grpc.RpcError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


def classify(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        request = classifier_pb2.ClassifyRequest(model="intent", texts=MESSAGES, top_k=3)
        response = stub.Classify(request, timeout=30)
    print(f"\nintent v{response.version}, served by ecomserve on {address}:\n")
    for message, result in zip(MESSAGES, response.results, strict=True):
        best = ", ".join(f"{label.label} {label.score:.2f}" for label in result.labels)
        print(f"  {message}\n    -> {best}")


def draft_reply(address: str) -> None:
    request = generator_pb2.GenerateRequest(
        model=GENERATOR,
        messages=[generator_pb2.ChatMessage(role="user", content=REPLY_REQUEST)],
        sampling=generator_pb2.SamplingParameters(max_new_tokens=80, temperature=0.3, repetition_penalty=1.2, seed=7),
    )
    print(f"\n{GENERATOR}, streamed from {address}:\n\n  ", end="", flush=True)
    with grpc.insecure_channel(address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for message in stub.GenerateStream(request, timeout=120):
            print(message.text.replace("\n", "\n  "), end="", flush=True)
            if message.finish_reason:
                finish = generator_pb2.FinishReason.Name(message.finish_reason)
                print(
                    f"\n\n  [{finish}, {message.usage.completion_tokens} tokens, "
                    f"first token after {message.time_to_first_token_ms:.0f} ms]\n"
                )


if __name__ == "__main__":
    sys.exit(main())
