"""`make demo`: start the classifier on the exported defaults, classify sample customer messages, stop it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from ecomserve.classifier.v1 import classifier_pb2, classifier_pb2_grpc

from services.launcher import service

MESSAGES = [
    "Where is my order? It was supposed to arrive yesterday.",
    "I want to talk to a real person, not a bot.",
    "This is the third time my package is late. I am really disappointed.",
    "Can I change the delivery address for order 4471?",
    "How do I return the shoes? They are too small.",
    "You charged my card twice for the same purchase!",
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    args = parser.parse_args()
    flags = [
        "--models",
        str(args.models),
        "--metrics-port",
        "0",
        "--model-names",
        "intent",
        "--log-level",
        "warning",
    ]
    try:
        print("starting the classifier ...", flush=True)
        with service("services.classifier", *flags, quiet=False) as address:
            with grpc.insecure_channel(address) as channel:
                stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
                request = classifier_pb2.ClassifyRequest(model="intent", texts=MESSAGES, top_k=3)
                response = stub.Classify(request, timeout=30)
            print(f"\nintent v{response.version}, served by ecomserve on {address}:\n")
            for message, result in zip(MESSAGES, response.results, strict=True):
                best = ", ".join(f"{label.label} {label.score:.2f}" for label in result.labels)
                print(f"  {message}\n    -> {best}")
            print()
        return 0
    except (RuntimeError, grpc.RpcError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
