"""`python -m services.classifier`: serve every classifier in the model repository over gRPC."""

from __future__ import annotations

import sys

from services.classifier.app import ClassifierApp
from services.classifier.config import ClassifierConfig
from services.core.server import serve_main


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        ClassifierConfig,
        "classifier",
        ClassifierApp,
        argv,
        description="Text classification over gRPC (ecomserve.classifier.v1) with dynamic batching.",
    )


if __name__ == "__main__":
    sys.exit(main())
